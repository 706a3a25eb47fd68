import Logging
import WAL

/// The `schema` and `shared` strategies: one log for every tenant in `<data>/shared/`, each
/// record framed with its tenant id, and every tenant resident from start-up. `schema` gives each
/// tenant an executor of its own, `shared` one executor for all.
///
/// The store checkpoints the whole log once `TENANT_CHECKPOINT_BYTES` were appended since the
/// last checkpoint (and at a clean shutdown): at a cut `C` (the log's last lsn when it starts,
/// the writer rolling to a new segment), each tenant's state is captured on its own actor once
/// its records are durable, at its own cut `c ≥ C` (every record of the tenant up to `c`, none
/// after). One file holds them all; once it is durable the segments wholly at or before `C` and
/// the older checkpoints go. Recovery loads the newest file, replays the log after `C` and skips
/// a tenant's records up to its own `c`. Creations and deletions wait while a checkpoint captures
/// (so none is half in and half out of the cut), and a checkpoint waits for those in flight.
actor SharedLogStore: TenantStore {
    nonisolated let layout: DataLayout
    nonisolated let configuration: EngineConfiguration
    nonisolated let logger: Logger
    /// True for `shared`: one executor runs every tenant.
    nonisolated let oneExecutor: Bool
    nonisolated let sharedExecutor: TenantExecutor
    nonisolated var fileSystem: any WALFileSystem { self.configuration.fileSystem }
    nonisolated var files: TenantFiles { self.layout.sharedLog }

    private var log: SharedLog?
    private var members: [String: Tenant] = [:]
    private var lastCheckpointLSN: UInt64 = 0
    private var checkpointing = false
    /// The checkpoint being written, which a second caller waits for.
    private var running: Task<Void, any Error>?
    private var changesInFlight = 0
    private var waitingForCheckpoint: [CheckedContinuation<Void, Never>] = []
    private var waitingForChanges: CheckedContinuation<Void, Never>?

    init(configuration: EngineConfiguration, logger: Logger, oneExecutor: Bool) {
        self.configuration = configuration
        self.logger = logger
        self.oneExecutor = oneExecutor
        self.sharedExecutor = configuration.makeTenantExecutor()
        self.layout = DataLayout(root: configuration.dataDirectory, prefix: configuration.directoryPrefix)
    }

    nonisolated var passivates: Bool { false }

    // MARK: - Recovery

    /// The shared log recovered: every live tenant's state and bytes on disk.
    struct Recovered {
        var states: [String: TenantState] = [:]
        var storage: [String: Int64] = [:]
        /// Each tenant's cut in the checkpoint loaded.
        var cuts: [String: UInt64] = [:]
        var result: WALRecoveryResult?
        var checkpointLSN: UInt64 = 0
        /// The checkpoint file's size.
        var checkpointSize: Int64 = 0
        /// Log bytes after the checkpoint.
        var bytesAfterCheckpoint: Int64 = 0
    }

    /// Rebuilds every tenant of the shared log: the newest usable checkpoint, then the records
    /// after it (the one reading of the shared log's framing, for recovery and verify alike).
    /// - Parameter repair: cut a torn tail off and remove unfinished checkpoints, or change nothing.
    /// - Throws: ``WALError`` for corruption, ``TenantError`` for a record that does not decode.
    static func recover(
        files: TenantFiles,
        fileSystem: any WALFileSystem,
        maxRecordSize: Int,
        repair: Bool,
        logger: Logger?,
        makeCold: () -> ColdStore? = { nil }
    ) throws -> Recovered {
        let log = CheckpointedLog(files: files, fileSystem: fileSystem)
        var recovered = Recovered()
        if let checkpoint = try log.loadNewestCheckpoint(
            repair: repair,
            logger: logger,
            decode: { try SharedCheckpoint.decode(source: $0, path: $1, makeCold: makeCold) }
        ) {
            recovered.checkpointLSN = checkpoint.lsn
            recovered.checkpointSize = Int64(checkpoint.size)
            for entry in checkpoint.body {
                recovered.states[entry.id] = entry.state
                recovered.storage[entry.id] = Int64(entry.size)
                recovered.cuts[entry.id] = entry.cut
            }
        }
        recovered.result = try log.replay(
            after: recovered.checkpointLSN,
            maxRecordSize: maxRecordSize,
            repair: repair,
            logger: logger
        ) { record in
            recovered.bytesAfterCheckpoint += Int64(record.storedSize)
            do {
                let (id, payload) = try SharedLogPayload.split(record.payload)
                if let cut = recovered.cuts[id], record.lsn <= cut { return }
                let decoded = try TenantRecord.decode(type: record.type, payload: payload)
                if case .tenantDeleted = decoded {
                    recovered.states[id] = nil
                    recovered.storage[id] = nil
                    recovered.cuts[id] = nil
                    return
                }
                // A tenant begins with its metadata: anything else of an id with no live tenant
                // (a write that raced its deletion) belongs to no tenant.
                if recovered.states[id] == nil {
                    guard case .metadata = decoded else { return }
                }
                try recovered.states[id, default: TenantState(cold: makeCold())].apply(decoded)
                recovered.storage[id, default: 0] += Int64(record.storedSize)
            } catch {
                throw TenantError(.storageFailed, "shared log record \(record.lsn) does not decode: \(error)")
            }
        }
        return recovered
    }

    func load(context: TenantContext) async throws -> StoredTenants {
        let configuration = self.configuration
        let files = self.files
        let fileSystem = self.fileSystem
        let logger = self.logger
        let (recovered, writer) = try await runBlocking {
            let recovered: Recovered
            do {
                recovered = try Self.recover(
                    files: files,
                    fileSystem: fileSystem,
                    maxRecordSize: configuration.sharedWALConfiguration.maxRecordSize,
                    repair: true,
                    logger: logger,
                    makeCold: context.makeColdStore
                )
            } catch let error as WALError {
                throw TenantError(.storageFailed, "the shared log is damaged: \(error)")
            }
            let writer = try WALWriter(
                directory: files.wal,
                lastLSN: recovered.result?.lastLSN ?? 0,
                configuration: configuration.sharedWALConfiguration,
                fileSystem: fileSystem
            )
            return (recovered, writer)
        }
        let log = SharedLog(
            writer: writer,
            checkpointBytes: configuration.checkpointBytes,
            appendedSinceCheckpoint: recovered.bytesAfterCheckpoint,
            lastCheckpointSize: recovered.checkpointSize
        ) { [weak self] in
            Task { await self?.checkpointInBackground() }
        }
        self.log = log
        self.lastCheckpointLSN = recovered.checkpointLSN
        for (id, state) in recovered.states {
            guard let metadata = state.metadata, metadata.tenantID == id else {
                self.logger.error("shared log holds records of tenant \(id) without its metadata; not served")
                continue
            }
            let tenant = self.makeTenant(state: state, storage: recovered.storage[id] ?? 0, log: log, context: context)
            await tenant.recovered(checkpointLSN: recovered.cuts[id] ?? 0, logBytes: 0)
            self.members[id] = tenant
        }
        return .resident(Array(self.members.values))
    }

    private func makeTenant(state: TenantState, storage: Int64, log: SharedLog, context: TenantContext) -> Tenant {
        let id = state.metadata!.tenantID
        return Tenant(
            data: state,
            journal: SharedJournal(log: log, tenantID: id),
            storageBytes: storage,
            executor: self.oneExecutor
                ? self.sharedExecutor : self.configuration.makeTenantExecutor(),
            context: context
        )
    }

    // MARK: - Tenants

    func open(id: String, context: TenantContext) async throws -> Tenant {
        // Every tenant of the shared log is resident: one not open does not exist.
        throw TenantError.notFound("no tenant '\(id)'")
    }

    func create(metadata: TenantMetadata, owner: User?, context: TenantContext) async throws -> Tenant {
        guard let log = self.log else { throw TenantError(.unavailable, "shared log is not open") }
        await self.beginChange()
        defer { self.endChange() }
        let prefix = SharedLogPayload.prefix(for: metadata.tenantID)
        var state = TenantState()
        var storage: Int64 = 0
        var appended = false
        do {
            var last: UInt64 = 0
            for record in [TenantRecord.metadata(metadata)] + (owner.map { [TenantRecord.userPut($0)] } ?? []) {
                let (lsn, size) = try log.append(record, prefix: prefix)
                appended = true
                try state.apply(record)
                storage += Int64(size)
                last = lsn
            }
            try await log.writer.waitUntilDurable(last)
        } catch {
            if appended {
                // Records held back by a shortage may still land: a deletion after them keeps the
                // unacknowledged tenant from coming back at the next start.
                _ = try? log.append(.tenantDeleted, prefix: prefix)
            }
            throw TenantError.ioError("could not write the new tenant to the shared log: \(error)")
        }
        let tenant = self.makeTenant(state: state, storage: storage, log: log, context: context)
        self.members[metadata.tenantID] = tenant
        return tenant
    }

    func delete(id: String, tenant: Tenant?) async throws {
        guard let log = self.log, let tenant = tenant ?? self.members[id] else {
            throw DeletionFailure(removed: false, error: TenantError.notFound("no tenant '\(id)'"))
        }
        await self.beginChange()
        defer { self.endChange() }
        // No write of the tenant may follow its deletion record: writes stop first.
        do {
            try await tenant.beginDeletion()
        } catch {
            throw DeletionFailure(removed: false, error: error as? TenantError ?? TenantError.ioError("\(error)"))
        }
        let lsn: UInt64
        do {
            lsn = try log.append(.tenantDeleted, prefix: SharedLogPayload.prefix(for: id)).lsn
        } catch {
            await tenant.abortDeletion()
            throw DeletionFailure(removed: false, error: TenantError.ioError("could not log the deletion: \(error)"))
        }
        await tenant.close(deleted: true)
        self.members[id] = nil
        do {
            try await log.writer.waitUntilDurable(lsn)
        } catch {
            // Queued, so it may still land: deleted here, and the operator told it may not be durable.
            self.logger.error("tenant \(id) deleted, but its deletion record may not be durable: \(error)")
            throw DeletionFailure(
                removed: true,
                error: TenantError.ioError(
                    "tenant deleted, but its deletion may not be durable (a crash may bring it back): \(error)"
                )
            )
        }
    }

    /// Every tenant is in the one shared log: none has a directory of its own.
    nonisolated var directories: (any TenantDirectories)? { nil }

    // MARK: - Checkpoints

    private func beginChange() async {
        while self.checkpointing { await withCheckedContinuation { self.waitingForCheckpoint.append($0) } }
        self.changesInFlight += 1
    }

    private func endChange() {
        self.changesInFlight -= 1
        if self.changesInFlight == 0, let waiting = self.waitingForChanges {
            self.waitingForChanges = nil
            waiting.resume()
        }
    }

    private func checkpointInBackground() async {
        do {
            try await self.checkpoint()
        } catch {
            self.logger.error("shared log checkpoint failed (the log still holds everything): \(error)")
            // Not again at once: the next append past the threshold asks after a pause.
            try? await Task.sleep(for: .seconds(10))
            self.log?.checkpointEnded(consumed: 0)
        }
    }

    /// Checkpoints the shared log: every tenant's state in one file, then the segments and older
    /// checkpoints it covers dropped. A call while one runs waits for that one.
    /// - Throws: when a tenant cannot be captured or the file cannot be written; the log still
    ///   holds everything then.
    func checkpoint() async throws {
        if let running = self.running {
            try await running.value
            return
        }
        let task = Task { try await self.writeCheckpoint() }
        self.running = task
        defer { self.running = nil }
        try await task.value
    }

    private func writeCheckpoint() async throws {
        guard let log = self.log else { return }
        self.checkpointing = true
        defer {
            self.checkpointing = false
            let waiting = self.waitingForCheckpoint
            self.waitingForCheckpoint = []
            for continuation in waiting { continuation.resume() }
        }
        while self.changesInFlight > 0 { await withCheckedContinuation { self.waitingForChanges = $0 } }
        let cut = log.writer.lastAppendedLSN
        guard cut > self.lastCheckpointLSN else {
            log.checkpointEnded(consumed: 0)
            return
        }
        // Records after the cut go to a new segment, so the ones before can be dropped.
        log.writer.startNewSegment()
        let consumed = log.bytesSinceCheckpoint
        var entries: [SharedCheckpoint.Capture] = []
        var tenants: [Tenant] = []
        for (id, tenant) in self.members.sorted(by: { $0.key < $1.key }) {
            guard let (state, tenantCut) = await tenant.captureForCheckpoint(floor: cut) else {
                throw TenantError(.unavailable, "tenant \(id) is not serving; the shared log is not checkpointed")
            }
            entries.append(SharedCheckpoint.Capture(id: id, cut: tenantCut, state: state))
            tenants.append(tenant)
        }
        // The states may hold records not yet durable: the checkpoint never runs ahead of the log.
        try await log.writer.waitUntilDurable(entries.map(\.cut).max() ?? cut)
        let files = self.files
        let fileSystem = self.fileSystem
        let writer = log.writer
        let captures = entries
        let (fileSize, sizes) = try await CheckpointMetrics.measure {
            try await runBlocking {
                let (bytes, sizes) = try SharedCheckpoint.encode(captures, lsn: cut)
                try CheckpointedLog(files: files, fileSystem: fileSystem).commit(
                    checkpoint: bytes,
                    lsn: cut,
                    lastAppendedLSN: writer.lastAppendedLSN
                )
                return (Int64(bytes.count), sizes)
            }
        }
        self.lastCheckpointLSN = cut
        log.checkpointEnded(consumed: consumed, size: fileSize)
        for (index, tenant) in tenants.enumerated() {
            await tenant.checkpointed(storageBytes: Int64(sizes[index]), cut: entries[index].cut)
        }
        self.logger.debug("shared log checkpoint written", metadata: ["lsn": "\(cut)", "tenants": "\(entries.count)"])
    }

    func checkpoint(open tenants: [Tenant]) async throws {
        try await self.checkpoint()
    }

    func prepareShutdown(checkpoint: Bool) async {
        guard checkpoint, let log = self.log, log.writer.lastAppendedLSN > self.lastCheckpointLSN else { return }
        do {
            try await self.checkpoint()
        } catch {
            self.logger.error("shared log checkpoint at shutdown failed (the log still holds everything): \(error)")
        }
    }

    func close() async {
        guard let log = self.log else { return }
        self.log = nil
        do {
            try await log.writer.close()
        } catch {
            self.logger.error("closing the shared log failed: \(error)")
        }
    }
}

/// The shared log's checkpoint: every tenant's state at its own cut, in one checkpoint file
/// (``Checkpoint``'s header, checksummed compressed blocks and trailer). The body is a count, then
/// per tenant its id, its cut (u64) and its state's body as a tenant checkpoint holds it.
enum SharedCheckpoint {
    struct Capture {
        var id: String
        var cut: UInt64
        var state: TenantState
    }

    struct Entry {
        var id: String
        var cut: UInt64
        var state: TenantState
        /// The share of the file this tenant takes (its part of the body, scaled to the file).
        var size: Int
    }

    /// The file bytes, and each tenant's share of them.
    static func encode(_ captures: [Capture], lsn: UInt64) throws -> (bytes: [UInt8], sizes: [Int]) {
        var writer = BinaryWriter(capacity: 1 << 16)
        writer.writeVarint(UInt64(captures.count))
        var bodySizes: [Int] = []
        for capture in captures {
            let start = writer.bytes.count
            writer.write(capture.id)
            writer.write(capture.cut)
            writer.write(bytes: try Checkpoint.body(capture.state))
            bodySizes.append(writer.bytes.count - start)
        }
        let bytes = try Checkpoint.encode(body: writer.bytes, lsn: lsn)
        let scale = Double(bytes.count) / Double(max(1, writer.bytes.count))
        return (bytes, bodySizes.map { Int((Double($0) * scale).rounded(.up)) })
    }

    /// The fewest body bytes one tenant takes: an id, a cut and an empty state.
    private static let minimumEntrySize = 4 + 8 + 4

    /// Checks and decodes a shared checkpoint file. Every count is bounded by the bytes left.
    static func decode(
        bytes: [UInt8],
        path: String,
        makeCold: () -> ColdStore? = { nil }
    ) throws -> ([Entry], UInt64) {
        try self.decode(source: CheckpointBytes(bytes: bytes), path: path, makeCold: makeCold)
    }

    /// Decodes a shared checkpoint read block by block from `source`, each tenant's rooms under
    /// a cold store of its own from `makeCold`.
    static func decode(
        source: any CheckpointSource,
        path: String,
        makeCold: () -> ColdStore? = { nil }
    ) throws -> ([Entry], UInt64) {
        let container = try CheckpointReader(source: source, path: path)
        let lsn = container.lsn
        let scale = Double(source.size) / Double(max(1, container.bodySize))
        var reader = BodyStream(container)
        do {
            let count = try reader.readCount(minimumSize: Self.minimumEntrySize, "tenant count")
            var entries: [Entry] = []
            var seen: Set<String> = []
            for _ in 0..<count {
                let start = reader.position
                let id = try reader.readString()
                let cut = try reader.read(UInt64.self)
                let length = Int(try reader.read(UInt32.self))
                guard Names.isValidTenantID(id), seen.insert(id).inserted else {
                    throw RecordDecodingError.invalidValue("tenant id")
                }
                guard cut >= lsn, cut <= WALFormat.maxLSN else { throw RecordDecodingError.invalidValue("cut") }
                let bodyStart = reader.position
                let state = try Checkpoint.state(reading: &reader, cold: makeCold())
                guard reader.position - bodyStart == length else {
                    throw RecordDecodingError.invalidValue("tenant body length")
                }
                guard state.metadata?.tenantID == id else { throw RecordDecodingError.invalidValue("metadata") }
                let size = Int((Double(reader.position - start) * scale).rounded(.up))
                entries.append(Entry(id: id, cut: cut, state: state, size: size))
            }
            guard reader.isAtEnd else { throw RecordDecodingError.trailingBytes }
            return (entries, lsn)
        } catch let error as WALError {
            throw error
        } catch {
            throw WALError.corrupt(
                file: path,
                offset: Checkpoint.headerSize,
                reason: "shared checkpoint does not decode: \(error)"
            )
        }
    }
}
