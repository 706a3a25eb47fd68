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
    nonisolated let executor: TenantExecutor
    var state: State = .serving
    var data: TenantState
    /// Where the tenant's records go, as its storage strategy keeps them.
    let journal: any TenantJournal
    var pending: Deque<(lsn: UInt64, room: String, message: Message)> = []
    /// Bytes this tenant holds on disk: its directory, or its share of a shared log.
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
    /// The lsn of this tenant's newest record.
    var lastOwnLSN: UInt64 = 0
    /// The cut the newest checkpoint covers, and the log bytes this tenant appended since.
    var lastCheckpointLSN: UInt64 = 0
    var bytesSinceCheckpoint: Int64 = 0
    /// `bytesSinceCheckpoint` when the checkpoint being written was captured.
    var bytesAtCapture: Int64 = 0
    var checkpointRunning = false
    /// Messages per UTC day, counted when accepted (the log's own count, plus what waits for it).
    var quotaDay: MessageDayCounter
    let configuration: EngineConfiguration
    let logger: Logger
    let onMetadataChange: @Sendable (TenantMetadata) async throws -> Void

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        self.executor.asUnownedSerialExecutor()
    }

    init(
        data: TenantState,
        journal: any TenantJournal,
        storageBytes: Int64,
        executor: TenantExecutor,
        context: TenantContext
    ) {
        let id = data.metadata!.tenantID
        self.id = id
        self.data = data
        self.journal = journal
        self.storageBytes = storageBytes
        self.quotaDay = data.messageDays
        self.executor = executor
        self.configuration = context.configuration
        var logger = context.logger
        logger[metadataKey: "tenant"] = "\(id)"
        self.logger = logger
        self.onMetadataChange = context.onMetadataChange
    }

    /// After recovery: the cut its checkpoint covers, and the log bytes on disk beyond it (the
    /// unit `append` counts in, so the next checkpoint comes at the configured size).
    func recovered(checkpointLSN: UInt64, logBytes: Int64) {
        self.lastCheckpointLSN = checkpointLSN
        self.bytesSinceCheckpoint = logBytes
        self.lastOwnLSN = max(checkpointLSN, self.journal.checkpointsItself ? self.journal.lastAppendedLSN : 0)
    }

    /// Recovers a tenant directory on its own, outside any registry (tools and tests).
    public static func open(path: String, configuration: EngineConfiguration, logger: Logger) async throws -> Tenant {
        try await DirectoryStore.open(
            files: TenantFiles(path),
            context: TenantContext(configuration: configuration, logger: logger) { _ in }
        )
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
        if !deleted, checkpoint, case .serving = self.state, self.journal.checkpointsItself,
            self.lastOwnLSN > self.lastCheckpointLSN
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
            try await self.journal.close()
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
            let (lsn, size) = try self.journal.append(record)
            self.lastOwnLSN = lsn
            self.storageBytes += Int64(size)
            self.bytesSinceCheckpoint += Int64(size)
            if self.bytesSinceCheckpoint >= self.configuration.checkpointBytes && !self.checkpointRunning
                && self.journal.checkpointsItself
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
            try await self.journal.waitUntilDurable(lsn)
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
        let durable = self.journal.durableLSN
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
