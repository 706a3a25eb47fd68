import Logging
import Synchronization
import WAL

/// What `TENANT MIGRATE` reports once the destination serves the tenant.
public struct MigrationReport: Sendable {
    public var tenantID: String
    public var target: String
    public var migration: String
    /// Copy rounds while the tenant kept serving, then the final one while it paused.
    public var rounds: Int
    public var files: Int
    public var bytesSent: Int
    /// How long the tenant's requests waited: the final catch-up, the checks and the hand-over.
    public var pauseMilliseconds: Int64
    /// False when the destination has not confirmed yet (the source keeps asking).
    public var committed: Bool
}

/// Observers told when a tenant is handed to another server (the server closes the connections
/// working in it).
public final class MigrationObservers: Sendable {
    private let observers = Mutex<[@Sendable (_ id: String, _ reply: String) -> Void]>([])

    public func add(_ observer: @escaping @Sendable (_ id: String, _ reply: String) -> Void) {
        self.observers.withLock { $0.append(observer) }
    }

    func tell(id: String, reply: String) {
        for observer in self.observers.withLock({ $0 }) { observer(id, reply) }
    }
}

extension TenantError {
    /// The tenant lives on another server now: `MIGRATED <id> <host>:<port>`.
    public static func migrated(_ id: String, _ target: String) -> TenantError {
        TenantError(.migrated, "\(id) \(target)")
    }
}

/// The state of one migration's paused phase, shared with the requests that wait on it.
private final class HandOver: Sendable {
    struct State {
        var decided = false
        /// When the decision was durable: the end of the pause the clients saw.
        var decidedAt: ContinuousClock.Instant?
        /// The decision could be neither confirmed nor undone (a disk fault): the tenant is
        /// served by nobody until a restart reads what is on disk.
        var undecided = false
        var error: (any Error)?
        var manifest: [MigrationFile] = []
        var bytes = 0
    }
    let state = Mutex(State())
}

/// What the destination holds of each file, as the source knows it from what it sent.
private final class RemoteFiles: Sendable {
    let files: Mutex<[String: MigrationFile]>
    init(_ files: [MigrationFile]) {
        self.files = Mutex(Dictionary(files.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first }))
    }
}

extension TenantRegistry {
    // MARK: - The source

    /// Lets the registry reach other servers (the server gives it its protocol client), and
    /// starts the confirmations of hand-overs a crash interrupted.
    public func setMigrationPeers(_ factory: @escaping MigrationPeerFactory) {
        self.migrationPeers = factory
        for departure in self.departed.values where !departure.committed { self.retryCommit(departure) }
    }

    /// TENANT MIGRATE: sends tenant `id` to the server at `host:port` and hands it over. The
    /// directory is copied while the tenant serves (rounds of what changed), then its requests
    /// wait while the last changes are sent, the destination checks and syncs its copy, and this
    /// server records its decision; from then on the tenant is the destination's. Any failure
    /// before the decision leaves it here, serving. `database` strategy.
    /// - Parameters:
    ///   - token: the destination's operator token (nil: this server's own).
    /// - Throws: NOTFOUND, INVALID, LOADING (busy), IOERR, or the destination's refusal.
    public func migrateTenant(id: String, host: String, port: Int, token: String?) async throws -> MigrationReport {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard let directories = self.store.directories else {
            throw TenantError.invalid("TENANT MIGRATE is for the database strategy")
        }
        let store = self.store
        guard let metadata = self.catalog.entries[id] else {
            if let departure = self.departed[id] { throw TenantError.migrated(id, departure.target) }
            throw TenantError.notFound("no tenant '\(id)'")
        }
        guard let factory = self.migrationPeers else { throw TenantError(.unavailable, "server is starting") }
        // A move, a deletion, a detach or another migration: busy. A tenant merely being opened is
        // fine: the pause waits for its opening to end.
        guard !self.claims.holds(id: id), !self.undecided.contains(id) else {
            throw TenantError(.unavailable, "tenant '\(id)' is busy; retry")
        }
        self.claims.claim(id: id)
        defer { self.claims.release(id: id) }
        let target = Self.hostPort(host, port)
        let token = token ?? self.adminToken
        let migration = Tokens.hex((0..<8).map { _ in UInt8.random(in: 0...255) })
        let directory = directories.layout(for: id).tenantDirectory(id)
        let fileSystem = self.configuration.fileSystem
        let logger = self.logger
        logger.notice(
            "tenant migration started",
            metadata: [
                "event": "migration_started", "tenant_id": "\(id)", "target": "\(target)", "migration": "\(migration)",
            ]
        )
        let peer = try await factory(host, port, token)
        let remote: RemoteFiles
        do {
            remote = RemoteFiles(try await peer.begin(id: id, migration: migration))
        } catch {
            await peer.close()
            throw error
        }
        Failpoint.hit("migrate-after-begin")
        // Copy rounds while it serves: each sends what changed since the one before.
        var rounds = 0
        var bytesSent = 0
        do {
            while true {
                rounds += 1
                let sent = try await Self.sendChanges(
                    id: id,
                    migration: migration,
                    directory: directory,
                    remote: remote,
                    peer: peer,
                    fileSystem: fileSystem
                ).bytes
                bytesSent += sent
                if sent < EngineLimits.migrationPauseThreshold || rounds >= EngineLimits.migrationMaxLiveRounds {
                    break
                }
            }
        } catch {
            await self.abandon(peer, id: id, migration: migration, target: target, token: token)
            logger.warning(
                "tenant migration failed",
                metadata: ["event": "migration_failed", "tenant_id": "\(id)", "error": "\(error)"]
            )
            throw error
        }
        Failpoint.hit("migrate-after-precopy")
        // Activations begun during the copy (a login, a backup, a REOPEN's) end first, so that no
        // instance of the tenant is open but the one closed below; from the last check to the
        // start of the pause nothing is awaited, so none can begin in between.
        while true {
            guard case .running = self.state else {
                await self.abandon(peer, id: id, migration: migration, target: target, token: token)
                throw TenantError(.unavailable, "server is stopping")
            }
            guard let running = self.activating.running(id) else { break }
            _ = try? await running.value
            // Its caller installs the tenant and forgets the task on this actor: let it run.
            if self.activating.running(id) == running { try? await Task.sleep(for: .milliseconds(1)) }
        }
        // The pause: requests for the tenant join this task, as they join an activation.
        let pauseStart = ContinuousClock.now
        let current = self.active.removeValue(forKey: id)
        let context = self.tenantContext
        let handOver = HandOver()
        let departure = Departure(
            id: id,
            migration: migration,
            target: target,
            subdomain: metadata.subdomain,
            token: token == self.adminToken ? "" : token,
            directory: directory,
            committed: false,
            at: self.configuration.clock(),
            credentials: self.catalog.credentials[id]
        )
        let task = self.activating.start(id) {
            // Everything acknowledged is in the log once it is closed; no checkpoint now, so the
            // last round sends only the log's new tail.
            if let current { await current.close(checkpoint: false) }
            let marker = directory + "/" + MigrationFiles.migratedToName
            var prepared = false
            do {
                Failpoint.hit("migrate-after-pause")
                let last = try await Self.sendChanges(
                    id: id,
                    migration: migration,
                    directory: directory,
                    remote: remote,
                    peer: peer,
                    fileSystem: fileSystem
                )
                handOver.state.withLock {
                    $0.manifest = last.manifest
                    $0.bytes = last.bytes
                }
                Failpoint.hit("migrate-after-final-sync")
                try await peer.prepare(id: id, migration: migration, manifest: last.manifest)
                prepared = true
                Failpoint.hit("migrate-after-prepare")
                guard await self.isRunning else { throw TenantError(.unavailable, "server is stopping") }
                // The decision, durable before anything is told: from here the tenant is the destination's.
                try await runBlocking { try fileSystem.writeFileAtomically(marker, contents: departure.marker) }
            } catch {
                handOver.state.withLock { $0.error = error }
                if prepared {
                    // The marker may be in place (renamed, its sync failed): serving here again
                    // needs its absence durable; else nobody serves the tenant until a restart
                    // reads the disk (the destination keeps its prepared copy for that restart).
                    let undone: Bool
                    do {
                        try await runBlocking { () throws -> Void in
                            if fileSystem.exists(marker) { try fileSystem.remove(marker) }
                            try fileSystem.syncDirectory(directory)
                        }
                        undone = true
                    } catch {
                        undone = false
                    }
                    if !undone {
                        handOver.state.withLock { $0.undecided = true }
                        throw error
                    }
                }
                await self.abandon(peer, id: id, migration: migration, target: target, token: token)
                // Never handed over: it serves here again.
                return try await store.open(id: id, context: context)
            }
            handOver.state.withLock {
                $0.decided = true
                $0.decidedAt = .now
            }
            Failpoint.hit("migrate-after-decision")
            throw TenantError.migrated(id, target)
        }
        defer { self.activating.finish(id, task) }
        let reopened: Tenant
        do {
            reopened = try await task.value
        } catch {
            let (decided, undecided) = handOver.state.withLock { ($0.decided, $0.undecided) }
            if undecided {
                self.undecided.insert(id)
                await peer.close()
                logger.critical(
                    "tenant \(id) is served by no server: its migration's decision could be neither written nor undone (\(error)); fix the disk and restart: the file \(directory)/\(MigrationFiles.migratedToName) decides (present: the tenant is \(target)'s)",
                    metadata: ["event": "migration_undecided", "tenant_id": "\(id)"]
                )
                throw TenantError.ioError("tenant '\(id)' is between servers after a disk fault; see the log")
            }
            guard decided else {
                await peer.close()
                throw error
            }
            // Handed over: answered MIGRATED from now on, before anything else can run here.
            self.departed[id] = departure
            if !departure.subdomain.isEmpty { self.departedBySubdomain[departure.subdomain] = id }
            self.catalog.remove(id: id)
            self.counters.remove(id: id)
            self.saveCatalog()
            self.migrationEvents.tell(id: id, reply: "\(id) \(target)")
            let outcome = await self.commit(departure, peer: peer)
            await peer.close()
            if outcome == .pending { self.retryCommit(departure) }
            await self.flushCatalog()
            let (manifest, lastBytes, decidedAt) = handOver.state.withLock { ($0.manifest, $0.bytes, $0.decidedAt) }
            let pause = (decidedAt ?? .now) - pauseStart
            let report = MigrationReport(
                tenantID: id,
                target: target,
                migration: migration,
                rounds: rounds + 1,
                files: manifest.count,
                bytesSent: bytesSent + lastBytes,
                pauseMilliseconds: pause.components.seconds * 1000 + pause.components.attoseconds
                    / 1_000_000_000_000_000,
                committed: outcome == .committed
            )
            logger.notice(
                "tenant migrated",
                metadata: [
                    "event": "tenant_migrated", "tenant_id": "\(id)", "target": "\(target)",
                    "migration": "\(migration)", "pause_ms": "\(report.pauseMilliseconds)",
                    "bytes": "\(report.bytesSent)", "committed": "\(report.committed)",
                ]
            )
            return report
        }
        await peer.close()
        if case .stopped = self.state {
            await reopened.close()
            throw TenantError(.unavailable, "server is stopping")
        }
        self.active[id] = reopened
        let error: any Error = handOver.state.withLock { $0.error } ?? TenantError(.refused, "migration failed")
        logger.warning(
            "tenant migration failed",
            metadata: ["event": "migration_failed", "tenant_id": "\(id)", "error": "\(error)"]
        )
        throw error
    }

    var isRunning: Bool {
        if case .running = self.state { return true }
        return false
    }

    /// Tells the destination to drop what it received, and closes the connection. A connection
    /// already gone (a timeout closes it) is replaced: a few tries in the background, so that the
    /// destination does not keep a staging directory, and its subdomain claimed, for nothing.
    private func abandon(
        _ peer: any MigrationPeer,
        id: String,
        migration: String,
        target: String,
        token: String
    )
        async
    {
        do {
            try await peer.abort(id: id, migration: migration)
            await peer.close()
            return
        } catch {
            await peer.close()
        }
        guard let factory = self.migrationPeers, let (host, port) = try? Self.split(target) else { return }
        let logger = self.logger
        Task {
            for attempt in 0..<5 {
                try? await Task.sleep(for: .milliseconds(500 << attempt))
                guard let fresh = try? await factory(host, port, token) else { continue }
                let told = (try? await fresh.abort(id: id, migration: migration)) != nil
                await fresh.close()
                if told { return }
            }
            logger.warning(
                "the destination \(target) was not told to drop migration \(migration) of tenant \(id): its .incoming-\(id) stays until the next try or its operator removes it"
            )
        }
    }

    static func hostPort(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Sends what differs between the tenant directory and what the destination holds: a file's
    /// new tail when the start it holds is unchanged, the whole file otherwise.
    /// - Returns: every file sent or found equal, as the manifest of the directory now, and the
    ///   bytes sent.
    private static func sendChanges(
        id: String,
        migration: String,
        directory: String,
        remote: RemoteFiles,
        peer: any MigrationPeer,
        fileSystem: any WALFileSystem
    ) async throws -> (manifest: [MigrationFile], bytes: Int) {
        let paths = try await runBlocking { try MigrationFiles.list(directory, fileSystem: fileSystem) }
        var manifest: [MigrationFile] = []
        var bytes = 0
        for path in paths {
            let known = remote.files.withLock { $0[path] }
            let full = directory + "/" + path
            guard
                let local = try await runBlocking({
                    try MigrationFiles.checksum(full, prefix: known?.size, fileSystem: fileSystem)
                })
            else { continue }
            if let known, known.size == local.size, known.crc == local.crc {
                manifest.append(known)
                continue
            }
            var offset = 0
            var crc: UInt32 = 0
            if let known, let prefixCRC = local.prefixCRC, prefixCRC == known.crc {
                offset = known.size
                crc = known.crc
            }
            repeat {
                let count = min(EngineLimits.migrationChunkSize, local.size - offset)
                let at = offset
                let piece = try await runBlocking {
                    try MigrationFiles.read(full, offset: at, count: count, fileSystem: fileSystem)
                }
                try await peer.chunk(id: id, migration: migration, path: path, offset: offset, bytes: piece)
                crc = piece.withUnsafeBytes { CRC32C.checksum($0, continuing: crc) }
                offset += piece.count
                bytes += piece.count
                remote.files.withLock { $0[path] = MigrationFile(path: path, size: offset, crc: crc) }
                if piece.count < count { break }
            } while offset < local.size
            manifest.append(MigrationFile(path: path, size: offset, crc: crc))
        }
        return (manifest, bytes)
    }

    /// How asking the destination to serve a migrated tenant ended.
    enum CommitOutcome: Equatable {
        case committed
        /// No answer yet: ask again later.
        case pending
        /// The destination refuses for good (it lost the prepared copy): the operator decides.
        case refused
    }

    /// Asks the destination to serve the tenant, a few times; then the source's copy moves to
    /// `.migrated/`.
    private func commit(_ departure: Departure, peer: (any MigrationPeer)?) async -> CommitOutcome {
        var peer = peer
        var opened: (any MigrationPeer)?
        defer {
            if let opened { Task { await opened.close() } }
        }
        for attempt in 0..<5 {
            if attempt > 0 { try? await Task.sleep(for: .milliseconds(200 << attempt)) }
            do {
                if peer == nil, let factory = self.migrationPeers {
                    let (host, port) = try Self.split(departure.target)
                    let fresh = try await factory(
                        host,
                        port,
                        departure.token.isEmpty ? self.adminToken : departure.token
                    )
                    peer = fresh
                    opened = fresh
                }
                guard let connected = peer else { return .pending }
                try await connected.commit(id: departure.id, migration: departure.migration)
                Failpoint.hit("migrate-after-commit")
                await self.settle(departure)
                return .committed
            } catch let error as TenantError where [.notFound, .alreadyExists, .invalid].contains(error.kind) {
                self.logger.error(
                    "the destination refuses to serve migrated tenant \(departure.id): \(error); its copy here is in \(departure.directory)"
                )
                return .refused
            } catch {
                self.logger.warning("migrated tenant \(departure.id): the destination has not confirmed yet: \(error)")
                if let connected = opened {
                    await connected.close()
                    opened = nil
                }
                peer = nil
            }
        }
        return .pending
    }

    /// Keeps asking the destination in the background until it confirms (or refuses for good;
    /// a restart asks again).
    private func retryCommit(_ departure: Departure) {
        guard self.commitRetries[departure.id] == nil, self.migrationPeers != nil else { return }
        self.commitRetries[departure.id] = Task {
            var delay = Duration.seconds(1)
            while !Task.isCancelled {
                if await self.commit(departure, peer: nil) != .pending { break }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(30))
            }
            self.commitRetries[departure.id] = nil
        }
    }

    /// The destination serves it: the source's copy goes to `<root>/.migrated/`, kept for the operator.
    private func settle(_ departure: Departure) async {
        guard var current = self.departed[departure.id], current.migration == departure.migration, !current.committed
        else { return }
        let fileSystem = self.configuration.fileSystem
        let source = departure.directory
        let parent = POSIXFile.parent(of: source)
        let kept =
            parent + "/" + DirectoryStore.migratedName + "/"
            + (source.split(separator: "/").last.map(String.init) ?? departure.id) + "-\(departure.at)"
        do {
            try await runBlocking {
                if try fileSystem.makeDirectory(parent + "/" + DirectoryStore.migratedName) {
                    try fileSystem.syncDirectory(parent)
                }
                if fileSystem.exists(source) {
                    try fileSystem.rename(source, to: kept)
                    try fileSystem.syncDirectory(parent)
                    try fileSystem.syncDirectory(parent + "/" + DirectoryStore.migratedName)
                }
            }
            current.directory = kept
        } catch {
            self.logger.error("migrated tenant \(departure.id): its copy stays in \(source): \(error)")
        }
        current.committed = true
        self.departed[departure.id] = current
    }

    static func split(_ target: String) throws -> (String, Int) {
        guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
            throw TenantError.invalid("bad target \(target)")
        }
        var host = String(target[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    /// Forgets a departure (the tenant is served here again).
    func forgetDeparture(_ id: String) {
        guard let departure = self.departed.removeValue(forKey: id) else { return }
        if self.departedBySubdomain[departure.subdomain] == id { self.departedBySubdomain[departure.subdomain] = nil }
        self.commitRetries.removeValue(forKey: id)?.cancel()
    }

    /// Takes the departures the store found at start-up.
    func loadDepartures() {
        guard let directories = self.store.directories else { return }
        for departure in directories.departures.take() where self.catalog.entries[departure.id] == nil {
            self.departed[departure.id] = departure
            if !departure.subdomain.isEmpty { self.departedBySubdomain[departure.subdomain] = departure.id }
        }
    }

    // MARK: - The destination

    /// The staging directory of an incoming tenant.
    private func incomingDirectory(_ id: String) -> String {
        self.store.layout.root + "/" + DirectoryStore.incomingPrefix + id
    }

    private func checkReceiving(_ id: String) throws {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard self.store.directories != nil else {
            throw TenantError.invalid("TENANT RECEIVE is for the database strategy")
        }
        guard Names.isValidTenantID(id) else { throw TenantError.invalid("tenant id must be 1-50 bytes of [a-z0-9-]") }
        if let implied = self.impliedTenantID, implied != id {
            throw TenantError.invalid("single-tenant mode serves the tenant '\(implied)' only")
        }
    }

    private func checkMigrationID(_ migration: String) throws {
        guard !migration.isEmpty, migration.utf8.count <= 64,
            migration.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })
        else { throw TenantError.invalid("migration id must be 1-64 lowercase hex digits") }
    }

    /// TENANT RECEIVE … BEGIN: starts receiving tenant `id` (what arrived earlier for it stays,
    /// so a migration started again sends only what differs).
    /// - Returns: the files held for it.
    public func receiveBegin(id: String, migration: String) async throws -> [MigrationFile] {
        try self.checkReceiving(id)
        try self.checkMigrationID(migration)
        // First, so that no await falls between the checks below and the claim.
        await self.dropIdleIncoming()
        guard self.catalog.entries[id] == nil else {
            throw TenantError(.alreadyExists, "tenant '\(id)' is served here already")
        }
        guard !self.claims.holds(id: id) || self.incoming[id] != nil else {
            throw TenantError(.unavailable, "tenant '\(id)' is busy here; retry")
        }
        if let clash = self.nameClash(id: id, subdomain: "") { throw TenantError(.alreadyExists, clash) }
        if self.incoming[id] == nil {
            guard self.incoming.count < EngineConfiguration.maxIncomingMigrations else {
                throw TenantError(
                    .unavailable,
                    "\(EngineConfiguration.maxIncomingMigrations) migrations are arriving here already; retry later"
                )
            }
            self.claims.claim(id: id)
        }
        self.incoming[id] = migration
        self.incomingTouched[id] = self.configuration.clock()
        if let subdomain = self.preparedSubdomains.removeValue(forKey: id) { self.claims.release(subdomain: subdomain) }
        let staging = self.incomingDirectory(id)
        let fileSystem = self.configuration.fileSystem
        do {
            let files = try await runBlocking {
                if try fileSystem.makeDirectory(staging) { try fileSystem.syncDirectory(POSIXFile.parent(of: staging)) }
                // Held again for this migration: no longer prepared.
                if fileSystem.exists(staging + "/" + MigrationFiles.preparedName) {
                    try fileSystem.remove(staging + "/" + MigrationFiles.preparedName)
                }
                try fileSystem.writeFileAtomically(
                    staging + "/" + MigrationFiles.receivingName,
                    contents: MigrationFiles.encode([("migration", migration)])
                )
                var files: [MigrationFile] = []
                for path in try MigrationFiles.list(staging, fileSystem: fileSystem) {
                    if let sum = try MigrationFiles.checksum(staging + "/" + path, prefix: nil, fileSystem: fileSystem)
                    {
                        files.append(MigrationFile(path: path, size: sum.size, crc: sum.crc))
                    }
                }
                Failpoint.hit("receive-after-begin")
                return files
            }
            self.incomingBytes[id] = files.reduce(0) { $0 + Self.stagedSize(of: $1.path, bytes: $1.size) }
            self.incomingFiles[id] = files.count
            return files
        } catch {
            self.endIncoming(id)
            // Staging BEGIN cannot read is dropped rather than left on disk uncounted.
            if !fileSystem.exists(staging + "/" + MigrationFiles.preparedName) {
                try? await runBlocking { try fileSystem.removeTree(staging) }
            }
            throw Self.ioError(error, "could not prepare \(staging)")
        }
    }

    /// What a staged file counts against --migrate-staging-limit: its bytes, at least a block,
    /// and a block for each directory on its path (an empty file still takes an inode and a block).
    static func stagedSize(of path: String, bytes: Int) -> Int64 {
        let directories = path.utf8.reduce(0) { $0 + ($1 == UInt8(ascii: "/") ? 1 : 0) }
        return Int64(max(bytes, EngineLimits.migrationStagingBlock) + directories * EngineLimits.migrationStagingBlock)
    }

    private func endIncoming(_ id: String) {
        self.incomingBytes[id] = nil
        self.incomingFiles[id] = nil
        self.incomingTouched[id] = nil
        guard self.incoming.removeValue(forKey: id) != nil else { return }
        self.claims.release(id: id)
    }

    /// Drops the migrations arriving here that sent nothing for
    /// ``EngineConfiguration/incomingIdleMilliseconds`` and are not prepared (a prepared one
    /// waits for its source's decision, however long).
    func dropIdleIncoming() async {
        let now = self.configuration.clock()
        let fileSystem = self.configuration.fileSystem
        for (id, touched) in self.incomingTouched
        where now - touched >= EngineConfiguration.incomingIdleMilliseconds && self.preparedSubdomains[id] == nil {
            let staging = self.incomingDirectory(id)
            guard !fileSystem.exists(staging + "/" + MigrationFiles.preparedName) else { continue }
            self.endIncoming(id)
            try? await runBlocking { try fileSystem.removeTree(staging) }
            self.logger.notice(
                "abandoned migration staging removed",
                metadata: ["event": "migration_staging_dropped", "tenant_id": "\(id)"]
            )
        }
    }

    private func requireIncoming(_ id: String, _ migration: String) throws {
        try self.checkReceiving(id)
        guard self.incoming[id] == migration else {
            throw TenantError.notFound(
                "no migration \(migration.prefix(64)) of tenant '\(id)' is arriving here; BEGIN first"
            )
        }
    }

    /// TENANT RECEIVE … CHUNK: `bytes` at `offset` of `path` in the staging directory, after
    /// their CRC-32C is checked.
    public func receiveChunk(
        id: String,
        migration: String,
        path: String,
        offset: Int,
        crc: UInt32,
        bytes: [UInt8]
    ) async throws {
        try self.requireIncoming(id, migration)
        guard MigrationFiles.isValidPath(path) else {
            throw TenantError.invalid(
                "the path must be relative, of [A-Za-z0-9._-] parts, without '..' (at most 4 deep)"
            )
        }
        guard offset >= 0, offset <= EngineLimits.migrationMaxFileSize - bytes.count else {
            throw TenantError.invalid("offset out of range")
        }
        guard bytes.withUnsafeBytes({ CRC32C.checksum($0) }) == crc else {
            throw TenantError.invalid("chunk checksum mismatch: send it again")
        }
        let staging = self.incomingDirectory(id)
        let fileSystem = self.configuration.fileSystem
        // A chunk starts within what the file holds (no holes: a sparse file would hide its size
        // from the budget), and what it adds counts against --migrate-staging-limit.
        let existing = try await runBlocking { () -> Int? in
            let full = staging + "/" + path
            switch POSIXFile.kind(full) {
            case nil: return nil
            case .regularFile: return try fileSystem.fileSize(full)
            case .directory, .other: throw TenantError.invalid("\(path) is not a file here")
            }
        }
        let size = existing ?? 0
        guard offset <= size else {
            throw TenantError.invalid("offset \(offset) is past the end of \(path) (\(size) bytes): no holes")
        }
        let isNew = existing == nil
        if isNew {
            guard self.incomingFiles[id, default: 0] < EngineLimits.migrationMaxFiles else {
                throw TenantError.invalid("a migration sends at most \(EngineLimits.migrationMaxFiles) files")
            }
        }
        // A new file counts as at least a block (and its directories as one each): empty chunks
        // must not make files the budget never sees.
        let growth =
            isNew
            ? Self.stagedSize(of: path, bytes: offset + bytes.count)
            : Int64(max(0, offset + bytes.count - max(size, EngineLimits.migrationStagingBlock)))
        let limit = self.configuration.migrateStagingLimit
        let staged = self.incomingBytes.values.reduce(0, +)
        if limit > 0 && staged + growth > limit {
            throw TenantError(
                .quotaExceeded,
                "migrations arriving here would hold more than --migrate-staging-limit (\(limit) bytes)"
            )
        }
        self.incomingBytes[id, default: 0] += growth
        if isNew { self.incomingFiles[id, default: 0] += 1 }
        self.incomingTouched[id] = self.configuration.clock()
        do {
            try await runBlocking { try MigrationFiles.write(bytes, at: offset, to: path, in: staging) }
        } catch let error as TenantError {
            throw error
        } catch {
            throw Self.ioError(error, "could not write \(path)")
        }
        Failpoint.hit("receive-after-chunk")
    }

    /// TENANT RECEIVE … PREPARE: the tenant's whole file list. Files not in it are removed, every
    /// one in it must have its size and CRC, all are synced, and the copy must recover as a tenant
    /// of this id whose subdomain is free here. It then waits, durable and not served, for COMMIT.
    public func receivePrepare(id: String, migration: String, manifest: [MigrationFile]) async throws {
        try self.requireIncoming(id, migration)
        guard manifest.count <= EngineLimits.migrationMaxFiles else { throw TenantError.invalid("too many files") }
        for file in manifest where !MigrationFiles.isValidPath(file.path) {
            throw TenantError.invalid("bad path in the manifest: \(file.path.prefix(64))")
        }
        let staging = self.incomingDirectory(id)
        let fileSystem = self.configuration.fileSystem
        let maxRecordSize = self.configuration.walConfiguration.maxRecordSize
        let memory = self.memory
        let verification = try await runBlocking { () -> TenantVerification in
            let wanted = Dictionary(manifest.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
            for path in try MigrationFiles.list(staging, fileSystem: fileSystem) where wanted[path] == nil {
                try fileSystem.remove(staging + "/" + path)
            }
            for file in manifest {
                guard
                    let sum = try MigrationFiles.checksum(
                        staging + "/" + file.path,
                        prefix: nil,
                        fileSystem: fileSystem
                    ),
                    sum.size == file.size, sum.crc == file.crc
                else {
                    throw TenantError.invalid("\(file.path) does not match the manifest: send it again")
                }
            }
            try MigrationFiles.syncTree(staging, fileSystem: fileSystem)
            return TenantVerifier.verify(
                path: staging,
                maxRecordSize: maxRecordSize,
                fileSystem: fileSystem,
                memory: memory
            )
        }
        if let problem = verification.problem { throw TenantError.invalid("the copy does not recover: \(problem)") }
        guard verification.tenantID == id else {
            throw TenantError.invalid("the copy holds tenant \(verification.tenantID ?? "none"), not \(id)")
        }
        guard self.incoming[id] == migration else { throw TenantError(.unavailable, "the migration was started again") }
        // Whatever could make the COMMIT fail must fail here, before the source decides.
        guard self.catalog.entries[id] == nil, self.departed[id].map({ $0.committed }) ?? true else {
            throw TenantError(.alreadyExists, "tenant '\(id)' is served here, or is leaving here")
        }
        let target = self.store.layout.tenantDirectory(id)
        guard !fileSystem.exists(target) else {
            throw TenantError(.alreadyExists, "\(target) exists here: its operator must move it away first")
        }
        let subdomain = verification.subdomain
        if let clash = self.nameClash(id: id, subdomain: subdomain) { throw TenantError(.alreadyExists, clash) }
        if !subdomain.isEmpty {
            if let other = self.catalog.idBySubdomain[subdomain], other != id {
                throw TenantError(.alreadyExists, "subdomain '\(subdomain)' is served here by tenant \(other)")
            }
            if self.claims.holds(subdomain: subdomain) {
                throw TenantError(.alreadyExists, "subdomain '\(subdomain)' is taken here")
            }
            self.claims.claim(subdomain: subdomain)
            self.preparedSubdomains[id] = subdomain
        }
        do {
            try await runBlocking {
                try fileSystem.writeFileAtomically(
                    staging + "/" + MigrationFiles.preparedName,
                    contents: MigrationFiles.encode([("migration", migration), ("subdomain", subdomain)])
                )
            }
        } catch {
            throw Self.ioError(error, "could not mark \(staging) prepared")
        }
        Failpoint.hit("receive-after-prepare")
    }

    /// TENANT RECEIVE … COMMIT: serves the prepared tenant. Answered OK again for a tenant served
    /// since by this same migration (the source asks again after a crash).
    public func receiveCommit(id: String, migration: String) async throws {
        try self.checkReceiving(id)
        try self.checkMigrationID(migration)
        let fileSystem = self.configuration.fileSystem
        let staging = self.incomingDirectory(id)
        let target = self.store.layout.tenantDirectory(id)
        if self.catalog.entries[id] != nil {
            let directory = self.store.directories?.layout(for: id).tenantDirectory(id) ?? target
            for name in [MigrationFiles.migratedInName, MigrationFiles.preparedName] {
                if let bytes = try? fileSystem.readFile(directory + "/" + name),
                    MigrationFiles.fields(bytes)["migration"] == migration
                {
                    return
                }
            }
            throw TenantError(.alreadyExists, "tenant '\(id)' is served here already")
        }
        // Moved into place by an earlier COMMIT of this migration whose opening failed: open it.
        let placed =
            (try? fileSystem.readFile(target + "/" + MigrationFiles.preparedName)).map {
                MigrationFiles.fields($0)["migration"] == migration
            } ?? false
        if !placed {
            guard let bytes = try? fileSystem.readFile(staging + "/" + MigrationFiles.preparedName),
                MigrationFiles.fields(bytes)["migration"] == migration
            else {
                throw TenantError.notFound("migration \(migration.prefix(64)) of tenant '\(id)' is not prepared here")
            }
            guard !self.claims.holds(id: id) || self.incoming[id] != nil else {
                throw TenantError(.unavailable, "tenant '\(id)' is busy here; retry")
            }
            do {
                try await runBlocking {
                    guard !fileSystem.exists(target) else {
                        throw TenantError(.alreadyExists, "\(target) exists: remove it first")
                    }
                    try fileSystem.rename(staging, to: target)
                    try fileSystem.syncDirectory(POSIXFile.parent(of: target))
                    Failpoint.hit("receive-after-commit-rename")
                }
            } catch let error as TenantError {
                throw error
            } catch {
                throw Self.ioError(error, "could not move \(staging) into place")
            }
        }
        self.endIncoming(id)
        if let subdomain = self.preparedSubdomains.removeValue(forKey: id) { self.claims.release(subdomain: subdomain) }
        self.forgetDeparture(id)
        self.store.directories?.forget(id: id)
        let tenant = try await self.activate(id: id)
        let metadata = await tenant.metadata
        self.catalog.insert(metadata)
        self.saveCatalog()
        await self.flushCatalog()
        try? await runBlocking {
            try fileSystem.rename(
                target + "/" + MigrationFiles.preparedName,
                to: target + "/" + MigrationFiles.migratedInName
            )
            try? fileSystem.remove(target + "/" + MigrationFiles.receivingName)
            try fileSystem.syncDirectory(target)
        }
        Failpoint.hit("receive-after-commit")
        self.logger.notice(
            "tenant arrived",
            metadata: ["event": "tenant_arrived", "tenant_id": "\(id)", "migration": "\(migration)"]
        )
    }

    /// TENANT RECEIVE … ABORT: drops what arrived for this migration.
    public func receiveAbort(id: String, migration: String) async throws {
        try self.checkReceiving(id)
        try self.checkMigrationID(migration)
        let staging = self.incomingDirectory(id)
        let fileSystem = self.configuration.fileSystem
        let held = (try? fileSystem.readFile(staging + "/" + MigrationFiles.receivingName)).map {
            MigrationFiles.fields($0)["migration"]
        }
        guard self.incoming[id] == migration || held == migration else { return }
        self.endIncoming(id)
        if let subdomain = self.preparedSubdomains.removeValue(forKey: id) { self.claims.release(subdomain: subdomain) }
        try? await runBlocking { try fileSystem.removeTree(staging) }
    }

    /// Prepared migrations found at start-up keep their id and subdomain from other tenants.
    func loadIncoming() {
        let fileSystem = self.configuration.fileSystem
        let root = self.store.layout.root
        for (name, isDirectory) in (try? fileSystem.listDirectoryEntries(root)) ?? []
        where isDirectory && name.hasPrefix(DirectoryStore.incomingPrefix) {
            let id = String(name.dropFirst(DirectoryStore.incomingPrefix.count))
            guard Names.isValidTenantID(id), self.catalog.entries[id] == nil, !self.claims.holds(id: id),
                let bytes = try? fileSystem.readFile(root + "/" + name + "/" + MigrationFiles.preparedName),
                let migration = MigrationFiles.fields(bytes)["migration"]
            else {
                // Not prepared: no source waits on it (a migration sends BEGIN again after a
                // restart). Removed, so that abandoned staging never piles up.
                if !fileSystem.exists(root + "/" + name + "/" + MigrationFiles.preparedName) {
                    try? fileSystem.removeTree(root + "/" + name)
                    self.logger.notice(
                        "unprepared migration staging removed at start",
                        metadata: ["event": "migration_staging_dropped", "directory": "\(name)"]
                    )
                }
                continue
            }
            // Its source may have decided: the id waits for its COMMIT (or ABORT, or a new BEGIN).
            self.claims.claim(id: id)
            self.incoming[id] = migration
            // What it holds counts against --migrate-staging-limit, as before the restart.
            self.incomingBytes[id] = (try? fileSystem.treeSize(root + "/" + name)) ?? 0
            if let subdomain = MigrationFiles.fields(bytes)["subdomain"], !subdomain.isEmpty {
                self.claims.claim(subdomain: subdomain)
                self.preparedSubdomains[id] = subdomain
            }
        }
    }

    static func ioError(_ error: any Error, _ what: String) -> TenantError {
        if let error = error as? TenantError { return error }
        return TenantError.ioError("\(what): \(error)")
    }
}
