import DequeModule
import Dispatch
import Foundation
import Logging
import Synchronization
import WAL

/// One tenant: its rooms, messages and users in memory, every change first appended to its own log.
///
/// Messages become visible (to HISTORY, ROOMS) only once their record is durable; user and
/// metadata changes apply at append, in actor order, and a failed log stops the tenant from
/// serving anything built on them.
public actor Tenant {
    enum State {
        case serving
        case failed(TenantError)
        case closed(deleted: Bool)
    }

    /// The tenant id.
    public nonisolated let id: String
    /// The tenant's directory (`database` strategy), or the shared log's.
    public nonisolated let path: String
    nonisolated let executor: TenantExecutor
    var state: State = .serving
    var data: TenantState
    let log: TenantLog
    var pending: Deque<(lsn: UInt64, room: String, message: Message)> = []
    /// Bytes this tenant holds on disk: its directory, or its records in a shared log.
    var storageBytes: Int64
    /// The quota levels (80, 90, 100 %) already logged, per limit and day.
    var loggedQuotaLevels: [String: Int] = [:]
    var subscriptions = Subscriptions()
    /// Connections that hold this tenant as their context: a tenant with any is never passivated.
    nonisolated let leases = Atomic<Int>(0)
    /// Set once the tenant is closed: connections holding it then fetch the tenant anew.
    nonisolated let closedFlag = Atomic<Bool>(false)
    /// When a command last ran here (ms), for passivation.
    var lastUsed: Int64 = 0
    /// The lsn the newest checkpoint covers, and the log bytes appended since.
    var lastCheckpointLSN: UInt64 = 0
    var bytesSinceCheckpoint: Int64 = 0
    var checkpointRunning = false
    /// Messages per UTC day, counted when accepted (the log's own count, plus what waits for it).
    var quotaDay: MessageDayCounter
    let configuration: EngineConfiguration
    let logger: Logger
    let onMetadataChange: @Sendable (TenantMetadata) async -> Void

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        self.executor.asUnownedSerialExecutor()
    }

    init(
        data: TenantState,
        path: String,
        log: TenantLog,
        storageBytes: Int64,
        executor: TenantExecutor,
        configuration: EngineConfiguration,
        logger: Logger,
        onMetadataChange: @escaping @Sendable (TenantMetadata) async -> Void
    ) {
        let id = data.metadata!.tenantID
        self.id = id
        self.path = path
        self.data = data
        self.log = log
        self.storageBytes = storageBytes
        self.quotaDay = data.messageDays
        self.executor = executor
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "tenant"] = "\(id)"
        self.logger = logger
        self.onMetadataChange = onMetadataChange
    }

    /// Recovers a tenant from its own directory (`database` strategy): replays its log, cutting a
    /// torn tail off, and opens it for append.
    /// - Parameters:
    ///   - path: the tenant's directory.
    ///   - configuration: the engine's settings.
    ///   - logger: where recovery reports.
    ///   - onMetadataChange: told every new metadata once it is durable.
    /// - Returns: the tenant, serving.
    /// - Throws: ``TenantError`` when the directory holds no tenant or its log is corrupt.
    static func open(
        path: String,
        configuration: EngineConfiguration,
        logger: Logger,
        onMetadataChange: @escaping @Sendable (TenantMetadata) async -> Void
    ) async throws -> Tenant {
        let (recovered, writer, storage, logBytes) = try await runBlocking {
            let recovered: TenantStorage.Recovered
            do {
                recovered = try TenantStorage.recover(
                    path: path,
                    maxRecordSize: configuration.walConfiguration.maxRecordSize,
                    repair: true,
                    logger: logger
                )
            } catch let error as WALError {
                throw TenantError(.ioError, "tenant log is damaged: \(error)")
            }
            guard recovered.state.metadata != nil else {
                throw TenantError(.notFound, "no tenant metadata in \(path)")
            }
            if let note = try? POSIXFile.readAll(path + "/" + TenantRepair.noteName) {
                logger.warning("tenant directory \(path) was repaired: \(String(decoding: note, as: UTF8.self))")
            }
            let writer = try WALWriter(
                directory: path + "/wal",
                lastLSN: recovered.result.lastLSN,
                configuration: configuration.walConfiguration,
                fileSystem: configuration.fileSystem
            )
            return (recovered, writer, try Self.directorySize(path), try Self.directorySize(path + "/wal"))
        }
        let data = recovered.state
        let tenant = Tenant(
            data: data,
            path: path,
            log: .own(writer),
            storageBytes: storage,
            executor: TenantExecutor(label: "tenantd.tenant"),
            configuration: configuration,
            logger: logger,
            onMetadataChange: onMetadataChange
        )
        await tenant.recovered(checkpointLSN: recovered.checkpointLSN, logBytes: logBytes)
        return tenant
    }

    /// After recovery: what the checkpoint covers, and the log bytes on disk beyond it (the unit
    /// `append` counts in, so the next checkpoint comes at the configured size).
    func recovered(checkpointLSN: UInt64, logBytes: Int64) {
        self.lastCheckpointLSN = checkpointLSN
        self.bytesSinceCheckpoint = logBytes
    }

    /// Recovers a tenant directory on its own, outside any registry (tools and tests).
    public static func open(path: String, configuration: EngineConfiguration, logger: Logger) async throws -> Tenant {
        try await Self.open(path: path, configuration: configuration, logger: logger) { _ in }
    }

    /// Creates a new tenant's directory and serves it, its first records (its metadata and its
    /// owner) written once: a log in `staging`, fdatasync'd whatever the policy, the directory
    /// renamed to `path` (so a crash never leaves half a tenant there), and the same writer kept
    /// for the tenant, which then serves without reading anything back. Every file operation goes
    /// through the configured file layer.
    /// - Throws: the file layer's error; `staging` may then be left behind (start-up removes it).
    static func create(
        staging: String,
        path: String,
        metadata: TenantMetadata,
        owner: User?,
        configuration: EngineConfiguration,
        logger: Logger,
        onMetadataChange: @escaping @Sendable (TenantMetadata) async -> Void
    ) async throws -> Tenant {
        let fileSystem = configuration.fileSystem
        let writer = try await runBlocking {
            _ = try POSIXFile.makeDirectory(staging)
            return try WALWriter(
                directory: staging + "/wal",
                lastLSN: 0,
                configuration: configuration.walConfiguration,
                fileSystem: fileSystem
            )
        }
        let log = TenantLog.own(writer)
        var state = TenantState()
        let renamed = Atomic<Bool>(false)
        do {
            for record in [TenantRecord.metadata(metadata)] + (owner.map { [TenantRecord.userPut($0)] } ?? []) {
                _ = try log.append(record)
                try state.apply(record)
            }
            try await writer.flushAndSync()
            try await runBlocking {
                try fileSystem.syncDirectory(staging)
                try fileSystem.rename(staging, to: path)
                renamed.store(true, ordering: .relaxed)
                try fileSystem.syncDirectory(POSIXFile.parent(of: path))
            }
        } catch {
            try? await writer.close()
            if renamed.load(ordering: .relaxed) {
                // Renamed, but its name may not be durable: never acknowledged, so never a tenant
                // (left there, it would come back at the next start with a subdomain given away).
                try? await runBlocking { try? FileManager.default.removeItem(atPath: path) }
            }
            throw error
        }
        writer.moved(from: staging, to: path)
        let (storage, logBytes) = try await runBlocking {
            (try Self.directorySize(path), try Self.directorySize(path + "/wal"))
        }
        let tenant = Tenant(
            data: state,
            path: path,
            log: log,
            storageBytes: storage,
            executor: TenantExecutor(label: "tenantd.tenant"),
            configuration: configuration,
            logger: logger,
            onMetadataChange: onMetadataChange
        )
        await tenant.recovered(checkpointLSN: 0, logBytes: logBytes)
        return tenant
    }

    /// The bytes of every file under `path`.
    static func directorySize(_ path: String) throws -> Int64 {
        var total: Int64 = 0
        for name in try POSIXFile.listDirectory(path) {
            let child = path + "/" + name
            if POSIXFile.isDirectory(child) {
                total += try directorySize(child)
            } else {
                total += Int64(try POSIXFile.fileSize(child))
            }
        }
        return total
    }

    /// The tenant's metadata.
    public var metadata: TenantMetadata { self.data.metadata! }

    /// A connection takes this tenant as its context.
    public nonisolated func retain() {
        self.leases.wrappingAdd(1, ordering: .relaxed)
    }

    /// True once closed (passivated, reopened, deleted or shut down).
    public nonisolated var isClosed: Bool { self.closedFlag.load(ordering: .relaxed) }

    /// How many connections hold this tenant.
    public nonisolated var leaseCount: Int { self.leases.load(ordering: .relaxed) }

    /// A connection leaves this tenant.
    public nonisolated func release() {
        self.leases.wrappingSubtract(1, ordering: .relaxed)
    }

    /// True when nobody holds or used the tenant for `idle` milliseconds before `now`.
    func isIdle(now: Int64, idle: Int64) -> Bool {
        self.leases.load(ordering: .relaxed) <= 0 && self.subscriptions.rooms.isEmpty && now - self.lastUsed >= idle
            && self.pending.isEmpty && !self.checkpointRunning
    }

    /// Flushes and closes the log, after a checkpoint of a tenant's own log; the tenant answers
    /// nothing more (NOTFOUND once deleted).
    /// - Parameters:
    ///   - deleted: the tenant was deleted: no checkpoint, and NOTFOUND from now on.
    ///   - checkpoint: false leaves everything in the log (tools and benchmarks).
    public func close(deleted: Bool = false, checkpoint: Bool = true) async {
        self.subscriptions.closeAll()
        if !deleted, checkpoint, case .serving = self.state, self.log.isOwn,
            self.log.writer.lastAppendedLSN > self.lastCheckpointLSN
        {
            do {
                try await self.checkpoint()
            } catch {
                self.logger.error("checkpoint at close failed (the log still holds everything): \(error)")
            }
        }
        defer { self.closedFlag.store(true, ordering: .relaxed) }
        guard case .serving = self.state else {
            if case .failed = self.state { self.state = .closed(deleted: deleted) }
            return
        }
        self.state = .closed(deleted: deleted)
        do {
            try await self.log.close()
        } catch {
            self.logger.error("closing the log failed: \(error)")
        }
        self.applyDurable()
    }

    // MARK: - Access

    /// Checks that `principal` may act here with at least `minimum`, and that the tenant serves.
    /// - Returns: the role of a user, nil for the operator.
    func authorize(_ principal: Principal, minimum: Role) throws -> Role? {
        self.lastUsed = self.configuration.clock()
        if case .closed(let deleted) = self.state {
            throw deleted
                ? TenantError.notFound("tenant was deleted") : TenantError(.loading, "tenant is closed; retry")
        }
        switch principal {
        case .operator:
            return nil
        case .user(let tenantID, let name, let tokenHash):
            guard tenantID == self.id else {
                throw TenantError.noPermission("credential is not valid for tenant \(self.id)")
            }
            guard let user = self.data.users[name], Tokens.constantTimeEqual(user.tokenHash, tokenHash) else {
                throw TenantError.credentialRevoked
            }
            guard self.metadata.isServing else { throw TenantError.suspended }
            guard user.role >= minimum else {
                throw TenantError.noPermission("this command needs the \(minimum.rawValue) role")
            }
            return user.role
        }
    }

    /// Fails when the tenant cannot take writes.
    func checkWritable() throws {
        switch self.state {
        case .serving: return
        case .failed(let error): throw error
        case .closed(let deleted):
            throw deleted
                ? TenantError.notFound("tenant was deleted") : TenantError(.loading, "tenant is closed; retry")
        }
    }

    /// Checks a user's token.
    /// - Returns: the principal to use for later commands.
    /// - Throws: ``TenantError/wrongPass`` for an unknown user or a wrong token; SUSPENDED for a
    ///   suspended tenant's valid credential.
    public func authenticate(user name: String, token: String) throws -> Principal {
        let hash = Tokens.hash(token)
        guard let user = self.data.users[name], Tokens.constantTimeEqual(user.tokenHash, hash) else {
            throw TenantError.wrongPass
        }
        guard self.metadata.isServing else { throw TenantError.suspended }
        return .user(tenantID: self.id, name: name, tokenHash: hash)
    }

    /// The role of an authenticated principal: `operator` for the operator.
    public func roleName(of principal: Principal) throws -> String {
        try self.authorize(principal, minimum: .member)?.rawValue ?? "operator"
    }

    // MARK: - Log

    /// Appends a record to the log's batch; any failure turns the tenant to IOERR.
    func append(_ record: TenantRecord) throws -> UInt64 {
        try self.checkWritable()
        do {
            let (lsn, size) = try self.log.append(record)
            self.storageBytes += Int64(size)
            self.bytesSinceCheckpoint += Int64(size)
            if self.bytesSinceCheckpoint >= self.configuration.checkpointBytes && !self.checkpointRunning
                && self.log.isOwn
            {
                Task { await self.checkpointInBackground() }
            }
            return lsn
        } catch let error as WALError {
            if error.isRecordTooLarge { throw TenantError(.tooBig, error.description) }
            if error.isTransient { throw Self.transientError(error) }
            throw self.fail(error)
        }
    }

    /// Waits until `lsn` is durable, then makes the messages up to it visible.
    /// - Throws: IOERR; after a transient shortage (EMFILE, ENFILE, ENOMEM) the tenant keeps
    ///   serving and the log retries by itself.
    func waitDurable(_ lsn: UInt64) async throws {
        do {
            try await self.log.waitUntilDurable(lsn)
        } catch let error as WALError where error.isTransient {
            self.logger.warning("log write held back, retrying: \(error)")
            throw Self.transientError(error)
        } catch {
            throw self.fail(error)
        }
        self.applyDurable()
    }

    /// What a tenant's user is told of a transient shortage: no server path.
    static func transientError(_ error: WALError) -> TenantError {
        TenantError(
            .ioError,
            "the server is short of resources (\(error.publicDescription)); this write is not acknowledged, retry"
        )
    }

    /// Moves the messages whose records are durable from `pending` into the rooms, in lsn order.
    func applyDurable() {
        guard let first = self.pending.first else { return }
        let durable = self.log.durableLSN
        guard first.lsn <= durable else { return }
        while let next = self.pending.first, next.lsn <= durable {
            self.pending.removeFirst()
            do {
                try self.data.apply(.message(room: next.room, next.message))
            } catch {
                self.logger.critical("message \(next.lsn) does not apply: \(error)")
            }
            self.publish(room: next.room, message: next.message)
        }
    }

    /// Turns the tenant to IOERR: nothing more is acknowledged until it is opened again.
    func fail(_ error: any Error) -> TenantError {
        if case .failed(let existing) = self.state { return existing }
        // The tenant's users see what failed, never where: the operator's log has the paths.
        let cause = (error as? WALError)?.publicDescription ?? "I/O error"
        let tenantError = TenantError(
            .ioError,
            "write to the tenant's log failed (\(cause)); the tenant is read-only until the operator reopens it"
        )
        self.logger.error("log failed, tenant is read-only until TENANT REOPEN: \(error)")
        self.state = .failed(tenantError)
        self.pending.removeAll()
        return tenantError
    }
}

/// Runs blocking file work on a Dispatch thread, off the cooperative pool and every event loop.
@discardableResult
func runBlocking<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws -> Result {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global(qos: .userInitiated).async {
            continuation.resume(with: Swift.Result { try body() })
        }
    }
}
