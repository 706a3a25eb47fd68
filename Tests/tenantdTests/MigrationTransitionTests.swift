import EngineTestSupport
import Foundation
import Synchronization
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// Issue 22, point 2: every transition of a migration, source and destination, run through two
/// registries in one process (the peer calls the destination's registry directly, as the server's
/// protocol client does over TCP). The end-to-end kill trials stay in
/// Tests/stock-clients/test_migration.py.
@Suite("Migration transitions", .serialized)
struct MigrationTransitionTests {
    /// A transient fault: the connection dropped.
    struct Dropped: Error {}

    /// The destination as the source's registry reaches it, with faults on demand.
    final class LocalPeer: MigrationPeer {
        struct Script {
            var failChunks = false
            /// COMMITs answered with a dropped connection before one goes through.
            var commitDrops = 0
            /// COMMIT refused for good with this error.
            var commitRefusal: TenantError?
            /// Run just before PREPARE goes to the destination, and once it answered.
            var beforePrepare: (@Sendable () -> Void)?
            var afterPrepare: (@Sendable () -> Void)?
            /// ABORTs are not passed on (the destination's state stays to be looked at).
            var dropAborts = false
            var calls: [String] = []
        }

        let destination: TenantRegistry
        let script: Mutex<Script>

        init(_ destination: TenantRegistry, _ script: Script = Script()) {
            self.destination = destination
            self.script = Mutex(script)
        }

        var calls: [String] { self.script.withLock { $0.calls } }

        private func record(_ call: String) { self.script.withLock { $0.calls.append(call) } }

        func begin(id: String, migration: String) async throws -> [MigrationFile] {
            self.record("begin")
            return try await self.destination.receiveBegin(id: id, migration: migration)
        }

        func chunk(id: String, migration: String, path: String, offset: Int, bytes: [UInt8]) async throws {
            self.record("chunk")
            if self.script.withLock({ $0.failChunks }) { throw Dropped() }
            try await self.destination.receiveChunk(
                id: id,
                migration: migration,
                path: path,
                offset: offset,
                crc: bytes.withUnsafeBytes { CRC32C.checksum($0) },
                bytes: bytes
            )
        }

        func prepare(id: String, migration: String, manifest: [MigrationFile]) async throws {
            self.record("prepare")
            self.script.withLock { $0.beforePrepare }?()
            try await self.destination.receivePrepare(id: id, migration: migration, manifest: manifest)
            self.script.withLock { $0.afterPrepare }?()
        }

        func commit(id: String, migration: String) async throws {
            self.record("commit")
            let (drop, refusal) = self.script.withLock { script -> (Bool, TenantError?) in
                if script.commitDrops > 0 {
                    script.commitDrops -= 1
                    return (true, nil)
                }
                return (false, script.commitRefusal)
            }
            if drop { throw Dropped() }
            if let refusal { throw refusal }
            try await self.destination.receiveCommit(id: id, migration: migration)
        }

        func abort(id: String, migration: String) async throws {
            self.record("abort")
            if self.script.withLock({ $0.dropAborts }) { return }
            try await self.destination.receiveAbort(id: id, migration: migration)
        }

        func close() async {}
    }

    /// Two registries: `source` with tenant `acme` holding `messages` posts in `general`.
    struct Pair {
        let source: TenantRegistry
        let destination: TenantRegistry
        let peer: LocalPeer
        let id: String
        let token: String
        let sourcePath: String
        let destinationPath: String
    }

    static func pair(
        _ dir: TemporaryDirectory,
        messages: Int = 3,
        script: LocalPeer.Script = .init(),
        sourceFiles: (any WALFileSystem)? = nil,
        destinationFiles: (any WALFileSystem)? = nil
    ) async throws -> Pair {
        let sourcePath = dir.path + "/source"
        let destinationPath = dir.path + "/destination"
        for path in [sourcePath, destinationPath] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        let source = try await EngineFixtures.registry(sourcePath, fsync: .no) { configuration in
            if let sourceFiles { configuration.fileSystem = sourceFiles }
        }
        let destination = try await EngineFixtures.registry(destinationPath, fsync: .no) { configuration in
            if let destinationFiles { configuration.fileSystem = destinationFiles }
        }
        let peer = LocalPeer(destination, script)
        await source.setMigrationPeers { _, _, _ in peer }
        let (tenant, alice, created) = try await EngineFixtures.owner(source, subdomain: "acme")
        for n in 0..<messages { _ = try await tenant.postAndCommit(alice, room: "general", text: "message \(n)") }
        return Pair(
            source: source,
            destination: destination,
            peer: peer,
            id: created.metadata.tenantID,
            token: created.ownerToken,
            sourcePath: sourcePath,
            destinationPath: destinationPath
        )
    }

    /// A migration the source decided and the destination holds prepared: its COMMIT is refused.
    static func refusedAtCommit(_ dir: TemporaryDirectory) async throws -> (Pair, MigrationReport) {
        var script = LocalPeer.Script()
        script.commitRefusal = TenantError.notFound("not prepared here")
        let pair = try await Self.pair(dir, script: script)
        let report = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 1, token: nil)
        #expect(!report.committed)
        return (pair, report)
    }

    static func texts(_ registry: TenantRegistry, _ id: String, token: String) async throws -> [String] {
        let tenant = try await registry.tenant(id: id)
        let alice = try await tenant.authenticate(user: "alice", token: token)
        return try await tenant.history(alice, room: "general", after: nil, before: nil, limit: 100).map(\.text)
    }

    static func kind(_ body: () async throws -> Void) async -> TenantError.Kind? {
        do {
            try await body()
            return nil
        } catch let error as TenantError {
            return error.kind
        } catch {
            return nil
        }
    }

    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    // MARK: - copying → paused → prepared → decided → committed

    @Test func aMigrationHandsTheTenantOverWithEveryMessage() async throws {
        try await TemporaryDirectory.with { dir in
            let pair = try await Self.pair(dir)
            let report = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 7379, token: nil)
            #expect(report.committed)
            #expect(report.rounds >= 2)
            #expect(report.target == "peer:7379")
            #expect(pair.peer.calls.first == "begin")
            #expect(pair.peer.calls.suffix(2) == ["prepare", "commit"])
            // The source answers MIGRATED, by id and by subdomain; its copy is kept in .migrated/.
            #expect(await Self.kind { _ = try await pair.source.tenant(id: pair.id) } == .migrated)
            #expect(await pair.source.resolveAny("acme") == pair.id)
            #expect(await pair.source.migrations.departure(pair.id)?.committed == true)
            let kept = try FileManager.default.contentsOfDirectory(atPath: pair.sourcePath + "/.migrated")
            #expect(kept.count == 1)
            #expect(!Self.exists(DataLayout(root: pair.sourcePath).tenantDirectory(pair.id)))
            // The destination serves it whole, its staging gone, the migration it came by noted.
            #expect(
                try await Self.texts(pair.destination, pair.id, token: pair.token) == [
                    "message 0", "message 1", "message 2",
                ]
            )
            #expect(await pair.destination.migrations.arrival(pair.id) == nil)
            #expect(!Self.exists(DataLayout(root: pair.destinationPath).incomingDirectory(pair.id)))
            #expect(Self.exists(DataLayout(root: pair.destinationPath).tenantFiles(pair.id).migratedIn))
            // A COMMIT asked again (the source restarted) is answered OK; another migration's is refused.
            try await pair.destination.receiveCommit(id: pair.id, migration: report.migration)
            #expect(
                await Self.kind { try await pair.destination.receiveCommit(id: pair.id, migration: "abcdef") }
                    == .alreadyExists
            )
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    // MARK: - copying → abandoned, paused → abandoned

    @Test func aFailedCopyIsAbandonedAndTheTenantServesAtTheSource() async throws {
        try await TemporaryDirectory.with { dir in
            var script = LocalPeer.Script()
            script.failChunks = true
            let pair = try await Self.pair(dir, script: script)
            await #expect(throws: Dropped.self) {
                _ = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 1, token: nil)
            }
            #expect(pair.peer.calls.last == "abort")
            #expect(!pair.peer.calls.contains("prepare"))
            #expect(try await Self.texts(pair.source, pair.id, token: pair.token).count == 3)
            #expect(await !pair.source.claims.holds(id: pair.id))
            #expect(await pair.destination.migrations.arrival(pair.id) == nil)
            #expect(await !pair.destination.claims.holds(id: pair.id))
            #expect(!Self.exists(DataLayout(root: pair.destinationPath).incomingDirectory(pair.id)))
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    @Test func aRefusalAtPrepareIsAbandonedAndTheSourceServesAgain() async throws {
        try await TemporaryDirectory.with { dir in
            let pair = try await Self.pair(dir)
            // The destination serves another tenant under the same subdomain: PREPARE refuses.
            _ = try await EngineFixtures.owner(pair.destination, subdomain: "acme")
            let kind = await Self.kind {
                _ = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 1, token: nil)
            }
            #expect(kind == .alreadyExists)
            #expect(pair.peer.calls.suffix(2) == ["prepare", "abort"])
            // Paused, then reopened: it takes posts again, nothing lost, no marker left.
            let tenant = try await pair.source.tenant(id: pair.id)
            let alice = try await tenant.authenticate(user: "alice", token: pair.token)
            _ = try await tenant.postAndCommit(alice, room: "general", text: "after")
            #expect(try await Self.texts(pair.source, pair.id, token: pair.token).last == "after")
            #expect(!Self.exists(DataLayout(root: pair.sourcePath).tenantFiles(pair.id).migratedTo))
            #expect(await pair.source.migrations.departure(pair.id) == nil)
            #expect(await pair.destination.migrations.arrival(pair.id) == nil)
            #expect(!Self.exists(DataLayout(root: pair.destinationPath).incomingDirectory(pair.id)))
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    // MARK: - decided: COMMIT unanswered, then confirmed; refused

    @Test func aCommitNotAnsweredIsAskedAgainUntilConfirmed() async throws {
        try await TemporaryDirectory.with { dir in
            var script = LocalPeer.Script()
            script.commitDrops = 1
            let pair = try await Self.pair(dir, script: script)
            let report = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 1, token: nil)
            #expect(report.committed)
            #expect(pair.peer.calls.suffix(2) == ["commit", "commit"])
            #expect(try await Self.texts(pair.destination, pair.id, token: pair.token).count == 3)
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    @Test func aCommitRefusedLeavesTheDestinationPreparedAndTheSourceDecided() async throws {
        try await TemporaryDirectory.with { dir in
            let (pair, report) = try await Self.refusedAtCommit(dir)
            #expect(!report.committed)
            // Decided: the source never serves it again; the destination holds it prepared.
            #expect(await Self.kind { _ = try await pair.source.tenant(id: pair.id) } == .migrated)
            #expect(await pair.source.migrations.departure(pair.id)?.committed == false)
            #expect(Self.exists(DataLayout(root: pair.sourcePath).tenantFiles(pair.id).migratedTo))
            #expect(await pair.destination.migrations.isPrepared(pair.id, migration: report.migration))
            #expect(await pair.destination.migrations.preparedSubdomain(of: pair.id) == "acme")
            // Prepared: no chunk changes the verified copy; the subdomain is held from others.
            let chunk = await Self.kind {
                try await pair.destination.receiveChunk(
                    id: pair.id,
                    migration: report.migration,
                    path: "wal/x",
                    offset: 0,
                    crc: 0,
                    bytes: []
                )
            }
            #expect(chunk == .invalid)
            #expect(
                await Self.kind { _ = try await EngineFixtures.owner(pair.destination, subdomain: "acme") }
                    == .alreadyExists
            )
            // The operator commits it by hand: served, the subdomain its own.
            try await pair.destination.receiveCommit(id: pair.id, migration: report.migration)
            #expect(try await Self.texts(pair.destination, pair.id, token: pair.token).count == 3)
            #expect(await pair.destination.resolveAny("acme") == pair.id)
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    // MARK: - prepared: ABORT, a BEGIN again, a restart

    @Test func anAbortOfAPreparedArrivalDropsItAndFreesItsNames() async throws {
        try await TemporaryDirectory.with { dir in
            let (pair, report) = try await Self.refusedAtCommit(dir)
            // Another migration's ABORT changes nothing.
            try await pair.destination.receiveAbort(id: pair.id, migration: "ffff")
            #expect(await pair.destination.migrations.isPrepared(pair.id, migration: report.migration))
            try await pair.destination.receiveAbort(id: pair.id, migration: report.migration)
            #expect(await pair.destination.migrations.arrival(pair.id) == nil)
            #expect(await !pair.destination.claims.holds(id: pair.id))
            #expect(await !pair.destination.claims.holds(subdomain: "acme"))
            #expect(!Self.exists(DataLayout(root: pair.destinationPath).incomingDirectory(pair.id)))
            #expect(
                await Self.kind { try await pair.destination.receiveCommit(id: pair.id, migration: report.migration) }
                    == .notFound
            )
            _ = try await EngineFixtures.owner(pair.destination, subdomain: "acme")
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    @Test func aBeginAfterPrepareReceivesAgainAndKeepsWhatArrived() async throws {
        try await TemporaryDirectory.with { dir in
            let (pair, report) = try await Self.refusedAtCommit(dir)
            let held = try await pair.destination.receiveBegin(id: pair.id, migration: "0123")
            #expect(!held.isEmpty)
            #expect(await pair.destination.migrations.arrival(pair.id)?.phase == .receiving)
            #expect(await !pair.destination.claims.holds(subdomain: "acme"))
            #expect(!Self.exists(DataLayout(root: pair.destinationPath).incomingDirectory(pair.id) + "/PREPARED"))
            // The old migration can no longer commit; the new one must PREPARE first.
            #expect(
                await Self.kind { try await pair.destination.receiveCommit(id: pair.id, migration: report.migration) }
                    == .notFound
            )
            #expect(
                await Self.kind { try await pair.destination.receiveCommit(id: pair.id, migration: "0123") }
                    == .notFound
            )
            try await pair.destination.receivePrepare(id: pair.id, migration: "0123", manifest: held)
            try await pair.destination.receiveCommit(id: pair.id, migration: "0123")
            #expect(try await Self.texts(pair.destination, pair.id, token: pair.token).count == 3)
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    @Test func aPreparedArrivalOutlivesARestartAndCommits() async throws {
        try await TemporaryDirectory.with { dir in
            let (pair, report) = try await Self.refusedAtCommit(dir)
            // An arrival that was only receiving goes at the restart; the prepared one stays.
            _ = try await pair.destination.receiveBegin(id: "other1", migration: "aa")
            await pair.destination.shutdown()
            let restarted = try await EngineFixtures.registry(pair.destinationPath, fsync: .no)
            #expect(await restarted.migrations.isPrepared(pair.id, migration: report.migration))
            #expect(await restarted.migrations.arrival("other1") == nil)
            #expect(!Self.exists(DataLayout(root: pair.destinationPath).incomingDirectory("other1")))
            #expect(await restarted.claims.holds(id: pair.id))
            #expect(
                await Self.kind { _ = try await EngineFixtures.owner(restarted, subdomain: "acme") } == .alreadyExists
            )
            try await restarted.receiveCommit(id: pair.id, migration: report.migration)
            #expect(try await Self.texts(restarted, pair.id, token: pair.token).count == 3)
            await pair.source.shutdown()
            await restarted.shutdown()
        }
    }

    // MARK: - prepared → undecided, and the restart that decides

    @Test func aDecisionNeitherWrittenNorUndoneServesNobodyUntilARestart() async throws {
        try await TemporaryDirectory.with { dir in
            let files = FaultyFileSystem()
            var script = LocalPeer.Script()
            // The marker is renamed into place but its directory sync fails, and so does its removal.
            script.afterPrepare = {
                files.fail(.syncDirectory, times: Int.max)
                files.fail(.remove, times: Int.max)
            }
            let pair = try await Self.pair(dir, script: script, sourceFiles: files)
            let kind = await Self.kind {
                _ = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 1, token: nil)
            }
            #expect(kind == .storageFailed)
            #expect(!pair.peer.calls.contains("commit"))
            #expect(!pair.peer.calls.contains("abort"))
            #expect(await pair.source.migrations.isUndecided(pair.id))
            #expect(await Self.kind { _ = try await pair.source.tenant(id: pair.id) } == .storageFailed)
            #expect(await Self.kind { _ = try await pair.source.reopenTenant(id: pair.id) } == .unavailable)
            #expect(await pair.destination.migrations.preparedSubdomain(of: pair.id) == "acme")
            // The disk is fixed and the source restarts: the marker on disk decides, and the
            // destination is asked to COMMIT.
            files.clearFaults()
            await pair.source.shutdown()
            let marker = DataLayout(root: pair.sourcePath).tenantFiles(pair.id).migratedTo
            #expect(Self.exists(marker))
            let restarted = try await EngineFixtures.registry(pair.sourcePath, fsync: .no)
            #expect(await Self.kind { _ = try await restarted.tenant(id: pair.id) } == .migrated)
            let peer = pair.peer
            await restarted.setMigrationPeers { _, _, _ in peer }
            try await waitUntilAsync("the destination serves the tenant after the source's restart", seconds: 10) {
                (try? await pair.destination.tenant(id: pair.id)) != nil
            }
            #expect(try await Self.texts(pair.destination, pair.id, token: pair.token).count == 3)
            try await waitUntilAsync("the source records the confirmation", seconds: 10) {
                await restarted.migrations.departure(pair.id)?.committed == true
            }
            await restarted.shutdown()
            await pair.destination.shutdown()
        }
    }

    // MARK: - PREPARE's mark not written

    @Test func aPrepareWhoseMarkFailsIsTakenBackAndTheSourceServesAgain() async throws {
        try await TemporaryDirectory.with { dir in
            let files = FaultyFileSystem()
            var script = LocalPeer.Script()
            // The marker's rename fails: it is certainly not on disk.
            script.beforePrepare = { files.fail(.rename) }
            script.dropAborts = true
            let pair = try await Self.pair(dir, script: script, destinationFiles: files)
            let kind = await Self.kind {
                _ = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 1, token: nil)
            }
            #expect(kind == .storageFailed)
            // Receiving again, its subdomain free, no mark: a COMMIT finds nothing to serve.
            #expect(await pair.destination.migrations.arrival(pair.id)?.phase == .receiving)
            #expect(await !pair.destination.claims.holds(subdomain: "acme"))
            #expect(!Self.exists(DataLayout(root: pair.destinationPath).incomingDirectory(pair.id) + "/PREPARED"))
            let migration = await pair.destination.migrations.arrival(pair.id)?.migration ?? ""
            #expect(
                await Self.kind { try await pair.destination.receiveCommit(id: pair.id, migration: migration) }
                    == .notFound
            )
            // The source never decided: it serves the tenant.
            #expect(try await Self.texts(pair.source, pair.id, token: pair.token).count == 3)
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }

    @Test func aPrepareAgainWhoseMarkFailsKeepsTheCopyPrepared() async throws {
        try await TemporaryDirectory.with { dir in
            let files = FaultyFileSystem()
            var script = LocalPeer.Script()
            script.commitRefusal = TenantError.notFound("not prepared here")
            let pair = try await Self.pair(dir, script: script, destinationFiles: files)
            let report = try await pair.source.migrateTenant(id: pair.id, host: "peer", port: 1, token: nil)
            #expect(!report.committed)
            let staging = DataLayout(root: pair.destinationPath).incomingDirectory(pair.id)
            let manifest = try MigrationFiles.list(staging, fileSystem: files).map { path in
                let sum = try #require(
                    try MigrationFiles.checksum(staging + "/" + path, prefix: nil, fileSystem: files)
                )
                return MigrationFile(path: path, size: sum.size, crc: sum.crc)
            }
            // A PREPARE again (its reply was lost) is answered OK with the copy unchanged.
            try await pair.destination.receivePrepare(id: pair.id, migration: report.migration, manifest: manifest)
            // One whose new mark cannot be written leaves the first mark, and the copy prepared.
            files.fail(.rename)
            let kind = await Self.kind {
                try await pair.destination.receivePrepare(id: pair.id, migration: report.migration, manifest: manifest)
            }
            #expect(kind == .storageFailed)
            #expect(await pair.destination.migrations.isPrepared(pair.id, migration: report.migration))
            #expect(await pair.destination.claims.holds(subdomain: "acme"))
            #expect(Self.exists(staging + "/PREPARED"))
            try await pair.destination.receiveCommit(id: pair.id, migration: report.migration)
            #expect(try await Self.texts(pair.destination, pair.id, token: pair.token).count == 3)
            await pair.source.shutdown()
            await pair.destination.shutdown()
        }
    }
}
