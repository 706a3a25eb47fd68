import Logging
import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The `database` strategy: a directory, a log and an executor per tenant; tenants open on first
/// use and close when idle; a creation is written in a staging directory renamed into place, a
/// deletion renames the directory into the trash.
struct DirectoryStore: TenantStore, TenantDirectories {
    /// The data directory's layout: the catalog, and the tenants without a region.
    let layout: DataLayout
    /// Each region's root, by name (`TENANT_REGIONS`).
    let regionLayouts: [String: DataLayout]
    /// Which region each tenant lives in (absent: the data directory).
    let placement = Placement()
    let configuration: EngineConfiguration
    let logger: Logger
    var fileSystem: any WALFileSystem { self.configuration.fileSystem }

    /// Where tenants are, by id: set at start-up from the roots' listings, by CREATE, ATTACH and MOVE.
    final class Placement: Sendable {
        private let regions = Mutex<[String: String]>([:])

        func region(of id: String) -> String { self.regions.withLock { $0[id] ?? "" } }

        func set(_ id: String, region: String) {
            self.regions.withLock { $0[id] = region.isEmpty ? nil : region }
        }
    }

    /// The tenants handed to other servers, found by ``load(context:)``.
    let departures = DepartureBook()

    init(configuration: EngineConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.layout = DataLayout(root: configuration.dataDirectory, prefix: configuration.directoryPrefix)
        self.regionLayouts = configuration.regions.mapValues {
            DataLayout(root: $0, prefix: configuration.directoryPrefix)
        }
    }

    /// The layout of the root tenant `id` lives in.
    func layout(for id: String) -> DataLayout {
        self.layout(region: self.placement.region(of: id))
    }

    /// The layout of a region's root ("" or an unknown name: the data directory).
    func layout(region: String) -> DataLayout {
        region.isEmpty ? self.layout : (self.regionLayouts[region] ?? self.layout)
    }

    func region(of id: String) -> String { self.placement.region(of: id) }

    func place(id: String, region: String) throws {
        guard region.isEmpty || self.regionLayouts[region] != nil else {
            throw TenantError.invalid("unknown region '\(region.prefix(32))'; regions: \(self.regionNames)")
        }
        self.placement.set(id, region: region)
    }

    func forget(id: String) {
        self.placement.set(id, region: "")
    }

    func takeRestoreNote(id: String) -> String? {
        let files = self.layout(for: id).tenantFiles(id)
        let directory = files.directory
        let path = files.restoredFrom
        guard let bytes = try? self.fileSystem.readFile(path) else { return nil }
        try? self.fileSystem.remove(path)
        try? self.fileSystem.syncDirectory(directory)
        return String(decoding: bytes.prefix(4096), as: UTF8.self)
    }

    var regionNames: String {
        self.regionLayouts.isEmpty ? "none (TENANT_REGIONS)" : self.regionLayouts.keys.sorted().joined(separator: ", ")
    }

    var passivates: Bool { true }

    func load(context: TenantContext) async throws -> StoredTenants {
        let (fileSystem, logger, now) = (self.fileSystem, self.logger, self.configuration.clock())
        let layout = self.layout
        let regions = self.regionLayouts.sorted { $0.key < $1.key }
        let placement = self.placement
        let book = self.departures
        return try await runBlocking {
            var scan = DirectoryScan(fileSystem: fileSystem, logger: logger, now: now)
            try Self.checkRegionRoots(layout, regions, fileSystem: scan.fileSystem)
            for (region, root) in [("", layout)] + regions { try scan.scan(root, region: region) }
            scan.settle(placement)
            // A tenant served here again (migrated back) is no departure.
            book.set(scan.departures.values.filter { scan.found[$0.id] == nil })
            let index =
                (try? scan.fileSystem.readFile(layout.catalogFile)).flatMap(Catalog.decode(bytes:))
                ?? (try? scan.fileSystem.readFile(layout.legacyCatalogFile)).flatMap(Catalog.decode(bytes:))
            return .onDisk(ids: Set(scan.found.keys), index: index)
        }
    }

    func open(id: String, context: TenantContext) async throws -> Tenant {
        let layout = self.layout(for: id)
        var context = context
        if layout.root != self.layout.root { context.coldDirectory = layout.root }
        let tenant = try await Self.open(files: TenantFiles(layout.tenantDirectory(id)), context: context)
        guard tenant.id == id else {
            await tenant.close()
            throw TenantError(
                .storageFailed,
                "directory \(layout.tenantDirectory(id)) holds tenant \(tenant.id), not \(id)"
            )
        }
        if let source = self.takeRestoreNote(id: id) {
            // Restored by tenantctl restore, served now (by ATTACH or a start): said once.
            self.logger.notice(
                "tenant restored",
                metadata: ["event": "tenant_restored", "tenant_id": "\(id)", "from": "\(source)"]
            )
        }
        return tenant
    }

    /// A tenant directory recovered: its newest valid checkpoint, then its log after it.
    struct Recovered {
        var state: TenantState
        var result: WALRecoveryResult
        var checkpointLSN: UInt64
    }

    /// Rebuilds a tenant's state from its directory.
    /// - Parameters:
    ///   - repair: cut a torn tail off and remove unfinished checkpoint files (recovery), or change
    ///     nothing (verify).
    /// - Throws: ``WALError`` for corruption, ``TenantError`` for a record that does not decode.
    static func recover(
        files: TenantFiles,
        fileSystem: any WALFileSystem,
        maxRecordSize: Int,
        repair: Bool,
        logger: Logger?,
        makeCold: () -> ColdStore? = { nil }
    ) throws -> Recovered {
        // A directory placed by hand (ATTACH, a copy, a start, tenantctl, a migration's copy)
        // that holds a symbolic link is not read: its log or checkpoint could be another
        // tenant's files.
        if let foreign = try fileSystem.foreignFile(under: files.directory) {
            throw TenantError(.storageFailed, "\(WALError.foreignFile(foreign))")
        }
        let log = CheckpointedLog(files: files, fileSystem: fileSystem)
        // Each attempt gets a store of its own: a checkpoint that fails halfway drops its rooms
        // and their count in the budget with them.
        let checkpoint = try log.loadNewestCheckpoint(repair: repair, logger: logger) { file, path in
            let (state, lsn) = try Checkpoint.decode(source: file, path: path, cold: makeCold())
            guard state.metadata != nil else {
                throw WALError.corrupt(file: path, offset: 0, reason: "no tenant metadata")
            }
            return (state, lsn)
        }
        var state = checkpoint?.body ?? TenantState(cold: makeCold())
        let checkpointLSN = checkpoint?.lsn ?? 0
        let result = try log.replay(after: checkpointLSN, maxRecordSize: maxRecordSize, repair: repair, logger: logger)
        { record in
            do {
                try state.apply(TenantRecord.decode(type: record.type, payload: record.payload))
            } catch {
                throw TenantError(
                    .storageFailed,
                    "tenant log record \(record.lsn) in \(files.directory) does not decode: \(error)"
                )
            }
        }
        return Recovered(state: state, result: result, checkpointLSN: checkpointLSN)
    }

    /// Recovers a tenant from its directory: replays its log, cutting a torn tail off, and opens
    /// it for append.
    /// - Throws: ``TenantError`` when the directory holds no tenant or its log is corrupt.
    static func open(files: TenantFiles, context: TenantContext) async throws -> Tenant {
        let configuration = context.configuration
        let fileSystem = configuration.fileSystem
        let logger = context.logger
        let (recovered, writer, storage, logBytes) = try await runBlocking {
            let recovered: Recovered
            do {
                recovered = try Self.recover(
                    files: files,
                    fileSystem: fileSystem,
                    maxRecordSize: configuration.walConfiguration.maxRecordSize,
                    repair: true,
                    logger: logger,
                    makeCold: context.makeColdStore
                )
            } catch let error as WALError {
                throw TenantError(.storageFailed, "tenant log is damaged: \(error)")
            }
            guard recovered.state.metadata != nil else {
                throw TenantError(.notFound, "no tenant metadata in \(files.directory)")
            }
            if let note = try? fileSystem.readFile(files.repairNote) {
                logger.warning(
                    "tenant directory \(files.directory) was repaired: \(String(decoding: note, as: UTF8.self))"
                )
            }
            let writer = try WALWriter(
                directory: files.wal,
                lastLSN: recovered.result.lastLSN,
                configuration: configuration.walConfiguration,
                fileSystem: fileSystem
            )
            return (recovered, writer, try fileSystem.treeSize(files.directory), try fileSystem.treeSize(files.wal))
        }
        let tenant = Tenant(
            data: recovered.state,
            journal: DirectoryJournal(writer: writer, files: files, fileSystem: fileSystem),
            storageBytes: storage,
            executor: context.configuration.makeTenantExecutor(),
            context: context
        )
        await tenant.recovered(checkpointLSN: recovered.checkpointLSN, logBytes: logBytes)
        return tenant
    }

    /// Creates a new tenant's directory and serves it, its first records (its metadata and its
    /// owner) written once: a log in a staging directory, fdatasync'd whatever the policy, the
    /// directory renamed into place (so a crash never leaves half a tenant there), and the same
    /// writer kept for the tenant, which then serves without reading anything back.
    func create(metadata: TenantMetadata, owner: User?, context: TenantContext) async throws -> Tenant {
        let layout = self.layout(for: metadata.tenantID)
        var context = context
        if layout.root != self.layout.root { context.coldDirectory = layout.root }
        let staging = layout.stagingDirectory(metadata.tenantID)
        let path = layout.tenantDirectory(metadata.tenantID)
        let fileSystem = self.fileSystem
        let walConfiguration = self.configuration.walConfiguration
        do {
            let writer = try await runBlocking {
                _ = try fileSystem.makeDirectory(staging)
                return try WALWriter(
                    directory: TenantFiles(staging).wal,
                    lastLSN: 0,
                    configuration: walConfiguration,
                    fileSystem: fileSystem
                )
            }
            let files = TenantFiles(path)
            let journal = DirectoryJournal(writer: writer, files: files, fileSystem: fileSystem)
            var state = TenantState()
            let renamed = Atomic<Bool>(false)
            do {
                for record in [TenantRecord.metadata(metadata)] + (owner.map { [TenantRecord.userPut($0)] } ?? []) {
                    _ = try journal.append(record)
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
                    // Renamed, but its name may not be durable: never acknowledged, so never a
                    // tenant (left there, it would come back at the next start with a subdomain
                    // given away).
                    try? await runBlocking { try? fileSystem.removeTree(path) }
                }
                throw error
            }
            writer.moved(from: staging, to: path)
            let (storage, logBytes) = try await runBlocking {
                (try fileSystem.treeSize(files.directory), try fileSystem.treeSize(files.wal))
            }
            let tenant = Tenant(
                data: state,
                journal: journal,
                storageBytes: storage,
                executor: context.configuration.makeTenantExecutor(),
                context: context
            )
            await tenant.recovered(checkpointLSN: 0, logBytes: logBytes)
            return tenant
        } catch {
            try? await runBlocking { try? fileSystem.removeTree(staging) }
            throw TenantError.ioError("could not create the tenant directory: \(error)")
        }
    }

    /// Closes the tenant and renames its directory into the trash (so a crash never leaves half a
    /// tenant), then removes it from there in the background.
    func delete(id: String, tenant: Tenant?) async throws {
        await tenant?.close(deleted: true)
        let layout = self.layout(for: id)
        let directory = layout.tenantDirectory(id)
        let target = layout.trashEntry(id, stamp: self.configuration.clock())
        let fileSystem = self.fileSystem
        let renamed = Atomic<Bool>(false)
        do {
            try await runBlocking {
                if try fileSystem.makeDirectory(layout.trashDirectory) { try fileSystem.syncDirectory(layout.root) }
                try fileSystem.rename(directory, to: target)
                renamed.store(true, ordering: .relaxed)
                try fileSystem.syncDirectory(layout.root)
                try fileSystem.syncDirectory(layout.trashDirectory)
            }
        } catch {
            guard renamed.load(ordering: .relaxed) else {
                // Still in place and whole: the next use opens it again.
                throw DeletionFailure(
                    removed: false,
                    error: TenantError.ioError("could not move the tenant directory to the trash: \(error)")
                )
            }
            // Out of its place, but the move may not be durable: deleted here all the same.
            self.logger.error("tenant \(id) deleted, but its move to the trash may not be durable: \(error)")
            throw DeletionFailure(
                removed: true,
                error: TenantError.ioError(
                    "tenant deleted, but its move to the trash may not be durable (a crash may bring it back): \(error)"
                )
            )
        }
        let logger = self.logger
        Task.detached {
            do {
                try fileSystem.removeTree(target)
            } catch {
                logger.warning("could not empty \(target) from the trash (removed at the next start): \(error)")
            }
        }
    }

    var directories: (any TenantDirectories)? { self }

    func hasDirectory(id: String) -> Bool {
        for (region, layout) in [("", self.layout)] + self.regionLayouts.sorted(by: { $0.key < $1.key })
        where self.fileSystem.isDirectory(layout.tenantDirectory(id)) {
            self.placement.set(id, region: region)
            return true
        }
        return false
    }

    func move(id: String, to region: String) async throws {
        guard region.isEmpty || self.regionLayouts[region] != nil else {
            throw TenantError.invalid("unknown region '\(region.prefix(32))'; regions: \(self.regionNames)")
        }
        let from = self.layout(for: id)
        let to = self.layout(region: region)
        guard from.root != to.root else { return }
        let source = from.tenantDirectory(id)
        let target = to.tenantDirectory(id)
        let staging = to.movingDirectory(id)
        let trash = from.trashEntry(id, stamp: self.configuration.clock())
        let fileSystem = self.fileSystem
        let logger = self.logger
        let decided = Atomic<Bool>(false)
        let maxRecordSize = self.configuration.walConfiguration.maxRecordSize
        do {
            try await runBlocking {
                guard !fileSystem.exists(target) else {
                    throw TenantError(.alreadyExists, "\(target) exists: remove it first")
                }
                if fileSystem.exists(staging) { try fileSystem.removeTree(staging) }
                // A copy, every file synced, with the marker naming its source.
                try fileSystem.copyTree(source, to: staging)
                try fileSystem.writeFileAtomically(
                    TenantFiles(staging).movedFrom,
                    contents: Array(source.utf8)
                )
                try fileSystem.syncDirectory(staging)
                // The copy must recover as the source does before it may replace it.
                let copy = TenantVerifier.verify(path: staging, maxRecordSize: maxRecordSize, fileSystem: fileSystem)
                if let problem = copy.problem { throw TenantError.ioError("the copy does not verify: \(problem)") }
                // The decision: from this rename on, the copy is the tenant (start-up finishes the move).
                try fileSystem.rename(staging, to: target)
                try fileSystem.syncDirectory(to.root)
                decided.store(true, ordering: .relaxed)
                if try fileSystem.makeDirectory(from.trashDirectory) { try fileSystem.syncDirectory(from.root) }
                try fileSystem.rename(source, to: trash)
                try fileSystem.syncDirectory(from.root)
                try fileSystem.remove(TenantFiles(target).movedFrom)
                try fileSystem.syncDirectory(target)
            }
        } catch {
            if decided.load(ordering: .relaxed) {
                if fileSystem.exists(source) {
                    // The source is still there (whole and closed): the move is undone, so that one
                    // copy is the tenant whatever happens next. If even that fails, the marker
                    // makes the copy win at the next start, and the tenant is served from it now.
                    let undone =
                        (try? await runBlocking { () -> Bool in
                            try fileSystem.removeTree(target)
                            try fileSystem.syncDirectory(to.root)
                            return true
                        }) == true
                    if !undone { self.placement.set(id, region: region) }
                    throw TenantError.ioError(
                        "moving tenant \(id) failed: its source could not be removed (\(error)); "
                            + (undone ? "it stays in \(source)" : "it is served from \(target)")
                    )
                }
                // The source is gone: the tenant lives in the copy; its marker is tidied at the next start.
                self.placement.set(id, region: region)
                logger.error("tenant \(id) moved to \(target), but its marker was not removed: \(error)")
                return
            }
            try? await runBlocking { try? fileSystem.removeTree(staging) }
            if let error = error as? TenantError { throw error }
            throw TenantError.ioError("moving tenant \(id) to \(target) failed (it stays in \(source)): \(error)")
        }
        self.placement.set(id, region: region)
        Task.detached {
            do {
                try fileSystem.removeTree(trash)
            } catch {
                logger.warning("could not empty \(trash) from the trash (removed at the next start): \(error)")
            }
        }
    }

    func snapshotTarget(id: String, destination: String) throws -> String {
        guard destination.hasPrefix("/"), !destination.split(separator: "/").contains(".."),
            !destination.utf8.contains(0)
        else { throw TenantError.invalid("the destination must be an absolute path without '..'") }
        guard self.fileSystem.isDirectory(destination) else {
            throw TenantError.notFound("no directory \(destination)")
        }
        // A snapshot in a root the server scans would be a second live copy at the next start.
        let real = try? Self.realPath(destination)
        for root in [self.layout.root] + self.regionLayouts.values.map(\.root) where (try? Self.realPath(root)) == real
        {
            throw TenantError.invalid("the destination is a directory tenantd serves tenants from: choose another")
        }
        let target = DataLayout(root: destination, prefix: self.layout.prefix).tenantDirectory(id)
        guard !self.fileSystem.exists(target) else { throw TenantError(.alreadyExists, "\(target) already exists") }
        return target
    }

    /// Writes the catalog file; when that fails, removes the old one (if it can), so that a stale
    /// index is never trusted at the next start: the tenants' own logs rebuild it then.
    func saveIndex(_ catalog: Catalog) throws {
        do {
            if try self.fileSystem.makeDirectory(self.layout.catalogDirectory) {
                try self.fileSystem.syncDirectory(self.layout.root)
            }
            try self.fileSystem.writeFileAtomically(self.layout.catalogFile, contents: try catalog.encoded())
            if self.fileSystem.exists(self.layout.legacyCatalogFile) {
                try self.fileSystem.remove(self.layout.legacyCatalogFile)
                try self.fileSystem.syncDirectory(self.layout.catalogDirectory)
            }
        } catch {
            if (try? self.fileSystem.remove(self.layout.catalogFile)) != nil {
                try? self.fileSystem.syncDirectory(self.layout.catalogDirectory)
            }
            throw error
        }
    }

    func checkpoint(open tenants: [Tenant]) async throws {
        for tenant in tenants { try await tenant.checkpoint() }
    }

    func prepareShutdown(checkpoint: Bool) async {}

    func close() async {}
}
