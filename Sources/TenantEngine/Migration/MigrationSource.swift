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

/// The source's side of one `TENANT MIGRATE`: the tenant directory, the connection to the
/// destination and what the destination holds of each file. Its steps move the migration along
/// the source's state machine (``MigrationLedger/SourcePhase``); the registry runs them and
/// does what only it can (claims, the pause of the tenant's requests, reopening, the catalog).
final class MigrationSource: Sendable {
    let id: String
    let migration: String
    /// `<host>:<port>` of the destination.
    let target: String
    let files: TenantFiles
    let peer: any MigrationPeer
    let fileSystem: any WALFileSystem
    /// What the destination holds, as this side knows it from what it sent.
    private let remote: Mutex<[String: MigrationFile]>
    private let state = Mutex(State())

    struct State {
        var phase = MigrationLedger.SourcePhase.copying
        /// When the decision was durable: the end of the pause the clients saw.
        var decidedAt: ContinuousClock.Instant?
        /// Why a step failed.
        var error: (any Error)?
        /// The last round's manifest and bytes.
        var manifest: [MigrationFile] = []
        var bytes = 0
    }

    /// Opens the migration at the destination (BEGIN): it answers with the files it holds
    /// already, so that only what differs is sent. The connection is closed when BEGIN fails.
    static func begin(
        id: String,
        migration: String,
        target: String,
        files: TenantFiles,
        peer: any MigrationPeer,
        fileSystem: any WALFileSystem
    ) async throws -> MigrationSource {
        let held: [MigrationFile]
        do {
            held = try await peer.begin(id: id, migration: migration)
        } catch {
            await peer.close()
            throw error
        }
        return MigrationSource(
            id: id,
            migration: migration,
            target: target,
            files: files,
            peer: peer,
            fileSystem: fileSystem,
            remote: Dictionary(held.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
        )
    }

    private init(
        id: String,
        migration: String,
        target: String,
        files: TenantFiles,
        peer: any MigrationPeer,
        fileSystem: any WALFileSystem,
        remote: [String: MigrationFile]
    ) {
        self.id = id
        self.migration = migration
        self.target = target
        self.files = files
        self.peer = peer
        self.fileSystem = fileSystem
        self.remote = Mutex(remote)
    }

    /// Where the migration stands.
    var phase: MigrationLedger.SourcePhase { self.state.withLock { $0.phase } }
    /// Why it failed, if it did.
    var error: (any Error)? { self.state.withLock { $0.error } }
    /// The last round's manifest, the bytes it sent, and when the decision was durable.
    var lastRound: (manifest: [MigrationFile], bytes: Int, decidedAt: ContinuousClock.Instant?) {
        self.state.withLock { ($0.manifest, $0.bytes, $0.decidedAt) }
    }

    /// Moves the migration along its state machine; an event its phase cannot take is a bug.
    func advance(_ event: MigrationLedger.SourceEvent) {
        self.state.withLock { state in
            guard let next = MigrationLedger.next(state.phase, on: event) else {
                preconditionFailure("migration \(self.migration): \(event) cannot happen when \(state.phase)")
            }
            state.phase = next
            if next == .decided && state.decidedAt == nil { state.decidedAt = .now }
        }
    }

    /// Copy rounds while the tenant serves, each sending what changed since the one before,
    /// until a round sends little or the rounds run out. A failure leaves the phase `copying`
    /// (the caller abandons).
    /// - Returns: the rounds and the bytes sent.
    func copyWhileServing() async throws -> (rounds: Int, bytes: Int) {
        var rounds = 0
        var bytes = 0
        while true {
            rounds += 1
            let sent = try await self.sendChanges().bytes
            bytes += sent
            if sent < EngineLimits.migrationPauseThreshold || rounds >= EngineLimits.migrationMaxLiveRounds {
                return (rounds, bytes)
            }
        }
    }

    /// The paused phase, with the tenant closed: the last round, PREPARE, then the decision
    /// (`MIGRATED_TO` written durably), after which the tenant is the destination's. On a
    /// failure the phase says what is left: `abandoned` (serve it here again) or `undecided`
    /// (the marker may be on disk and could not be removed: serve it nowhere).
    /// - Parameter stillRunning: asked just before the decision; false gives up.
    func decide(marker: [UInt8], stillRunning: @Sendable () async -> Bool) async throws {
        self.advance(.pause)
        let fileSystem = self.fileSystem
        let files = self.files
        do {
            Failpoint.hit("migrate-after-pause")
            let last = try await self.sendChanges()
            self.state.withLock {
                $0.manifest = last.manifest
                $0.bytes = last.bytes
            }
            Failpoint.hit("migrate-after-final-sync")
            try await self.peer.prepare(id: self.id, migration: self.migration, manifest: last.manifest)
            self.advance(.prepared)
            Failpoint.hit("migrate-after-prepare")
            guard await stillRunning() else { throw TenantError(.unavailable, "server is stopping") }
            // The decision, durable before anything is told: from here the tenant is the destination's.
            try await runBlocking { try fileSystem.writeFileAtomically(files.migratedTo, contents: marker) }
        } catch {
            self.state.withLock { $0.error = error }
            var undone = true
            if self.phase == .prepared {
                // The marker may be in place (renamed, its sync failed): serving here again
                // needs its absence durable; else nobody serves the tenant until a restart
                // reads the disk (the destination keeps its prepared copy for that restart).
                do {
                    try await runBlocking { () throws -> Void in
                        if fileSystem.exists(files.migratedTo) { try fileSystem.remove(files.migratedTo) }
                        try fileSystem.syncDirectory(files.directory)
                    }
                } catch {
                    undone = false
                }
            }
            self.advance(.failed(undone: undone))
            throw error
        }
        self.advance(.decided)
    }

    /// Sends what differs between the tenant directory and what the destination holds: a file's
    /// new tail when the start it holds is unchanged, the whole file otherwise.
    /// - Returns: every file sent or found equal, as the manifest of the directory now, and the
    ///   bytes sent.
    func sendChanges() async throws -> (manifest: [MigrationFile], bytes: Int) {
        let fileSystem = self.fileSystem
        let directory = self.files
        let paths = try await runBlocking { try MigrationFiles.list(directory.directory, fileSystem: fileSystem) }
        var manifest: [MigrationFile] = []
        var bytes = 0
        for path in paths {
            let known = self.remote.withLock { $0[path] }
            let full = directory.file(path)
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
                try await self.peer.chunk(
                    id: self.id,
                    migration: self.migration,
                    path: path,
                    offset: offset,
                    bytes: piece
                )
                crc = piece.withUnsafeBytes { CRC32C.checksum($0, continuing: crc) }
                offset += piece.count
                bytes += piece.count
                let sent = MigrationFile(path: path, size: offset, crc: crc)
                self.remote.withLock { $0[path] = sent }
                if piece.count < count { break }
            } while offset < local.size
            manifest.append(MigrationFile(path: path, size: offset, crc: crc))
        }
        return (manifest, bytes)
    }

    /// `<host>:<port>`, with an IPv6 host in brackets.
    static func hostPort(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The host and port of `<host>:<port>`.
    static func split(_ target: String) throws -> (String, Int) {
        guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
            throw TenantError.invalid("bad target \(target)")
        }
        var host = String(target[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }
}
