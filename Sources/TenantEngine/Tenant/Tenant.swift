import Dispatch
import Logging
import Synchronization
import WAL

/// One tenant: an actor composing its membership (metadata and users), its message store, its
/// quota account, its subscribers and its checkpoint schedule, every change first appended to its
/// journal (its own log, or its share of the shared log, as its store keeps it).
///
/// Messages become visible (to HISTORY, ROOMS, subscribers) only once their record is durable;
/// user and metadata changes apply at append, in actor order, and a failed log stops the tenant
/// from serving anything built on them.
public actor Tenant {
    /// Where the tenant is in its life; each case carries what it needs.
    enum Lifecycle {
        /// Taking reads and writes.
        case serving
        /// Being deleted: reads still work, writes wait for the outcome (LOADING, retry).
        case deleting
        /// Its log failed: reads still work, every write gets this error until it is reopened.
        case failed(TenantError)
        /// Closed (passivated, reopened, shut down) or deleted: connections fetch it anew, or
        /// get NOTFOUND once deleted.
        case closed(deleted: Bool)
    }

    /// The tenant id.
    public nonisolated let id: String
    nonisolated let executor: TenantExecutor
    var lifecycle: Lifecycle = .serving
    /// Where the tenant's records go, as its storage strategy keeps them.
    let journal: any TenantJournal
    /// Its users and metadata. No observer: a property with one is read and written whole (a
    /// copy of every user on each POST's `authorize`); the gauges are published where it changes.
    var membership: Membership
    var messages: MessageStore
    /// Its quota counters (gauges published where the storage changes, as for ``membership``).
    var quota: QuotaAccount
    /// Its usage counters (metrics, INFO), kept across passivation by the registry's book.
    public nonisolated let counters: TenantCounters
    var subscriptions = Subscriptions()
    var checkpoints = CheckpointSchedule()
    /// Callers waiting for the running checkpoint to end (``waitForCheckpoint()``).
    var checkpointWaiters: [CheckedContinuation<Void, Never>] = []
    /// Connections that hold this tenant as their context: a tenant with any is never passivated.
    nonisolated let leases = Atomic<Int>(0)
    /// Set once the tenant is closed: connections holding it then fetch the tenant anew.
    nonisolated let closedFlag = Atomic<Bool>(false)
    /// Every accepted message with an lsn up to this one is visible (set on the actor by
    /// ``applyDurable()``, read by ``commit(_:)`` from anywhere).
    nonisolated let appliedLSN = Atomic<UInt64>(0)
    /// When a command last ran here (ms), for passivation.
    var lastUsed: Int64 = 0
    /// The buffer each record is encoded in before its log takes it (``append(_:)``).
    var recordScratch: [UInt8] = []
    let configuration: EngineConfiguration
    let logger: Logger
    let onMetadataChange: @Sendable (TenantMetadata) async throws -> Void
    let onCredentialChange: @Sendable (String, CredentialChange) async throws -> Void

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
        let metadata = data.metadata!
        self.id = metadata.tenantID
        self.membership = Membership(metadata: metadata, users: data.users)
        var cold = data.cold
        if cold == nil, let budget = context.memory {
            // Rooms recovered or created without a store: from now on they count in the budget.
            let store = ColdStore(
                budget: budget,
                directory: context.coldDirectory ?? context.configuration.dataDirectory,
                logger: context.logger
            )
            store.adopt(data.rooms)
            cold = store
        }
        self.messages = MessageStore(rooms: data.rooms, count: data.messageCount, cold: cold)
        let counters = context.counters.counters(for: metadata.tenantID)
        self.counters = counters
        self.quota = QuotaAccount(storageBytes: storageBytes, day: data.messageDays, counters: counters)
        self.journal = journal
        self.executor = executor
        self.configuration = context.configuration
        var logger = context.logger
        logger[metadataKey: "tenant_id"] = "\(metadata.tenantID)"
        self.logger = logger
        self.onMetadataChange = context.onMetadataChange
        self.onCredentialChange = context.onCredentialChange
        // Opened now counts as used now: a sweep must not close a tenant the moment it opens.
        self.lastUsed = context.configuration.clock()
        counters.set(storageBytes: storageBytes, users: data.users.count)
    }

    /// The gauges of ``counters`` follow the quota and the membership.
    func publishGauges() {
        self.counters.set(storageBytes: self.quota.storageBytes, users: self.membership.users.count)
    }

    /// After recovery: the cut its checkpoint covers, and the log bytes on disk beyond it (the
    /// unit `append` counts in, so the next checkpoint comes at the configured size).
    func recovered(checkpointLSN: UInt64, logBytes: Int64) {
        self.checkpoints.lastCheckpointLSN = checkpointLSN
        self.checkpoints.bytesSinceCheckpoint = logBytes
        self.checkpoints.lastCheckpointSize = max(0, self.quota.storageBytes - logBytes)
        self.checkpoints.lastOwnLSN = max(
            checkpointLSN,
            self.journal.ownLog?.lastAppendedLSN ?? 0
        )
    }

    /// Recovers a tenant directory on its own, outside any registry (tools and tests).
    public static func open(path: String, configuration: EngineConfiguration, logger: Logger) async throws -> Tenant {
        try await DirectoryStore.open(
            files: TenantFiles(path),
            context: TenantContext(configuration: configuration, logger: logger) { _ in }
        )
    }

    /// The tenant's metadata.
    public var metadata: TenantMetadata { self.membership.metadata }

    /// Every user's credential key, for the registry's catalog.
    var credentialKeys: Set<CredentialKey> { Set(self.membership.users.values.map(CredentialKey.init)) }

    /// The tenant's data as every record it appended describes it, durable or not (messages still
    /// waiting for the log included), for a checkpoint written once the log is durable that far.
    var checkpointImage: TenantState {
        let pending = self.messages.pendingByRoom
        return TenantState(
            metadata: self.membership.metadata,
            users: self.membership.users,
            rooms: self.messages.rooms,
            messageCount: self.messages.count + pending.values.reduce(0) { $0 + $1.count },
            messageDays: self.quota.day,
            pending: pending
        )
    }

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
            && !self.messages.hasPending && !self.checkpoints.running
    }

    /// Flushes and closes the log, after a checkpoint of a tenant's own log; the tenant answers
    /// nothing more (NOTFOUND once deleted).
    /// - Parameters:
    ///   - deleted: the tenant was deleted: no checkpoint, and NOTFOUND from now on.
    ///   - checkpoint: false leaves everything in the log (tools and benchmarks).
    public func close(deleted: Bool = false, checkpoint: Bool = true) async {
        self.subscriptions.closeAll()
        // A checkpoint running (by size, or for a snapshot) finishes first: its files are whole
        // before the log closes and anyone copies the directory.
        await self.waitForCheckpoint()
        if !deleted, checkpoint, case .serving = self.lifecycle, self.journal.ownLog != nil,
            self.checkpoints.hasNewRecords
        {
            do {
                try await self.checkpoint()
            } catch {
                self.logger.error("checkpoint at close failed (the log still holds everything): \(error)")
            }
        }
        // And one that began meanwhile: from here to the lifecycle's change nothing suspends.
        await self.waitForCheckpoint()
        defer {
            self.closedFlag.store(true, ordering: .relaxed)
            // A closed tenant serves nothing: its rooms leave memory and the budget now, not
            // when the last session holding this instance lets it go.
            self.messages.cold?.release()
            self.messages = MessageStore(rooms: [:], count: 0, cold: nil)
        }
        switch self.lifecycle {
        case .serving, .deleting: break
        case .failed:
            self.lifecycle = .closed(deleted: deleted)
            return
        case .closed: return
        }
        self.lifecycle = .closed(deleted: deleted)
        do {
            try await self.journal.close()
        } catch {
            self.logger.error("closing the log failed: \(error)")
        }
        self.applyDurable()
    }

    /// Stops taking writes for a deletion: once this returns, every record the tenant appended is
    /// durable and no other is appended until ``abortDeletion()`` or ``close(deleted:checkpoint:)``.
    func beginDeletion() async throws {
        try self.checkWritable()
        self.lifecycle = .deleting
        do {
            try await self.journal.waitUntilDurable(self.checkpoints.lastOwnLSN)
        } catch {
            self.abortDeletion()
            throw TenantError.ioError("the tenant's last writes are not durable; not deleted: \(error)")
        }
        self.applyDurable()
    }

    /// The deletion did not happen: the tenant serves again.
    func abortDeletion() {
        if case .deleting = self.lifecycle { self.lifecycle = .serving }
    }

    // MARK: - Access

    /// Checks that `principal` may take `action` here (``AccessRule``), that its credential still
    /// holds, and that the tenant serves.
    /// - Returns: the role of a user, nil for the operator.
    func authorize(_ principal: Principal, _ action: TenantAction) throws -> Role? {
        self.lastUsed = self.configuration.clock()
        if case .closed(let deleted) = self.lifecycle { throw Self.closedError(deleted: deleted) }
        switch principal {
        case .operator:
            return nil
        case .user(let tenantID, let name, let tokenHash):
            guard tenantID == self.id else {
                throw TenantError.noPermission("credential is not valid for tenant \(self.id)")
            }
            guard let user = self.membership.user(named: name, tokenHash: tokenHash) else {
                throw TenantError.credentialRevoked
            }
            guard self.metadata.isServing else { throw TenantError.suspended }
            guard AccessRule.permits(user.role, action) else { throw AccessRule.refusal(user.role, action) }
            return user.role
        }
    }

    static func closedError(deleted: Bool) -> TenantError {
        deleted ? TenantError.notFound("tenant was deleted") : TenantError(.unavailable, "tenant is closed; retry")
    }

    /// Fails when the tenant cannot take writes.
    func checkWritable() throws {
        switch self.lifecycle {
        case .serving: return
        case .deleting: throw TenantError(.unavailable, "tenant is being deleted; retry")
        case .failed(let error): throw error
        case .closed(let deleted): throw Self.closedError(deleted: deleted)
        }
    }

    /// Checks a user's token.
    /// - Returns: the principal to use for later commands.
    /// - Throws: ``TenantError/wrongPass`` for an unknown user or a wrong token; SUSPENDED for a
    ///   suspended tenant's valid credential.
    public func authenticate(user name: String, token: String) throws -> Principal {
        let hash = Tokens.hash(token)
        guard self.membership.user(named: name, tokenHash: hash) != nil else { throw TenantError.wrongPass }
        guard self.metadata.isServing else { throw TenantError.suspended }
        return .user(tenantID: self.id, name: name, tokenHash: hash)
    }

    /// The role of an authenticated principal: `operator` for the operator.
    public func roleName(of principal: Principal) throws -> String {
        try self.authorize(principal, .read)?.rawValue ?? "operator"
    }

    // MARK: - Log

    /// Appends a record to the log's batch; any failure turns the tenant to IOERR.
    func append(_ record: TenantRecord) throws -> UInt64 {
        try self.checkWritable()
        do {
            let (lsn, size) = try self.journal.append(record, scratch: &self.recordScratch)
            // A large message's buffer is not kept: ten thousand tenants would each hold one.
            if self.recordScratch.capacity > EngineLimits.recordScratchLimit { self.recordScratch = [] }
            self.quota.storageBytes += Int64(size)
            self.publishGauges()
            let due = self.checkpoints.appended(lsn: lsn, size: size, threshold: self.configuration.checkpointBytes)
            if due && self.journal.ownLog != nil { Task { await self.checkpointInBackground() } }
            return lsn
        } catch let error as WALError {
            if error.isRecordTooLarge { throw TenantError(.tooLarge, error.description) }
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
        } catch {
            throw self.failedWait(error)
        }
        self.applyDurable()
    }

    /// The error a failed wait for durability becomes; a failure that is not transient turns the
    /// tenant to IOERR.
    func failedWait(_ error: any Error) -> TenantError {
        if let error = error as? WALError, error.isTransient {
            self.logger.warning("log write held back, retrying: \(error)")
            return Self.transientError(error)
        }
        return self.fail(error)
    }

    /// What a tenant's user is told of a transient shortage: no server path.
    static func transientError(_ error: WALError) -> TenantError {
        TenantError(
            .storageFailed,
            "the server is short of resources (\(error.publicDescription)); this write is not acknowledged, retry"
        )
    }

    /// Makes the messages whose records are durable visible, in lsn order, and pushes them to
    /// their rooms' subscribers.
    func applyDurable() {
        let durable = self.journal.durableLSN
        defer { self.appliedLSN.store(durable, ordering: .releasing) }
        guard self.messages.hasPending else { return }
        do {
            let collect = !self.subscriptions.rooms.isEmpty
            for (room, message) in try self.messages.applyDurable(upTo: durable, collect: collect) {
                self.publish(room: room, message: message)
            }
        } catch {
            self.logger.critical("a durable message does not apply: \(error)")
        }
    }

    /// Turns the tenant to IOERR: nothing more is acknowledged until it is opened again.
    func fail(_ error: any Error) -> TenantError {
        if case .failed(let existing) = self.lifecycle { return existing }
        // The tenant's users see what failed, never where: the operator's log has the paths.
        let cause = (error as? WALError)?.publicDescription ?? "I/O error"
        let tenantError = TenantError(
            .storageFailed,
            "write to the tenant's log failed (\(cause)); the tenant is read-only until the operator reopens it"
        )
        self.logger.error("log failed, tenant is read-only until TENANT REOPEN: \(error)")
        // What the log holds is acknowledged, or will be by a commit still on its way here:
        // visible first, only the rest is dropped.
        self.applyDurable()
        self.lifecycle = .failed(tenantError)
        self.messages.dropPending()
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
