import EngineTestSupport
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
import WAL

@testable import TenantEngine

@Suite("Checkpoints and recovery")
struct CheckpointTests {
    static let corpusPath = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Benchmarks/Corpus/chatterbot-conversations.jsonl").path

    /// Every message of the chat corpus, in file order, with its room: one room per language and
    /// topic, as a chat product would hold those conversations.
    static func corpus() throws -> [(room: String, text: String)] {
        let text = try String(contentsOfFile: corpusPath, encoding: .utf8)
        var messages: [(String, String)] = []
        for line in text.split(separator: "\n") {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            let topic = "\(object?["lang"] ?? "x").\(object?["topic"] ?? "x")"
            let room = String(
                topic.unicodeScalars.map { scalar -> Character in
                    scalar.isASCII
                        && (CharacterSet.alphanumerics.contains(scalar) || ".:_-".unicodeScalars.contains(scalar))
                        ? Character(scalar) : "-"
                }.prefix(128)
            )
            messages += ((object?["messages"] as? [String]) ?? []).map { (room, $0) }
        }
        return messages
    }

    @Test func aRoomGivesBackEveryMessageItKeepsInItsColumns() throws {
        var room = Room()
        var kept: [Message] = []
        let texts = ["", "héllo wörld", "日本語のメッセージ", String(repeating: "x", count: 70_000), "🙂", "a\u{0}b"]
        for index in 0..<600 {
            let message = Message(
                seq: UInt64(index + 1),
                timestamp: 1_795_000_000_000 + Int64(index % 7) * 1000 - Int64(index % 3),
                user: ["alice", "bob", "carol-\(index % 5)"][index % 3],
                text: texts[index % texts.count] + (index % 4 == 0 ? "" : " \(index)")
            )
            try room.apply(message)
            kept.append(message)
        }
        #expect(try room.allMessages() == kept)
        #expect(room.count == 600 && room.lastSeq == 600)
        #expect(room.textBytes == kept.reduce(0) { $0 + $1.text.utf8.count })
        #expect(try room.history(after: 10, before: nil, limit: 5) == Array(kept[10..<15]))
        #expect(try room.history(after: nil, before: 20, limit: 5) == Array(kept[14..<19]))
        #expect(try room.history(after: nil, before: nil, limit: 3) == Array(kept[597..<600]))
        #expect(try room.history(after: 600, before: nil, limit: 3).isEmpty)
        // Out of order is refused and leaves the room as it was.
        #expect(throws: RecordDecodingError.self) {
            try room.apply(Message(seq: 602, timestamp: 0, user: "alice", text: "gap"))
        }
        #expect(try room.allMessages() == kept)
    }

    static func registry(
        _ path: String,
        checkpointBytes: Int64 = 64 << 20,
        segmentSize: Int = 8 << 20
    ) async throws -> TenantRegistry {
        try await EngineFixtures.registry(path, fsync: .no) {
            $0.checkpointBytes = checkpointBytes
            $0.segmentSize = segmentSize
        }
    }

    /// What a client can see of a tenant: every room's every message, and the users.
    static func observe(_ tenant: Tenant) async throws -> [String] {
        var seen: [String] = []
        for room in try await tenant.rooms(.operator) {
            seen.append("room \(room.room) \(room.lastSeq) \(room.messageCount)")
            var after: UInt64 = 0
            while true {
                let page = try await tenant.history(.operator, room: room.room, after: after, before: nil, limit: 1000)
                guard let last = page.last else { break }
                seen += page.map { "\($0.seq) \($0.timestamp) \($0.user) \($0.text)" }
                after = last.seq
            }
        }
        seen += try await tenant.listUsers(.operator).map { "user \($0.name) \($0.role) \($0.joinedAt)" }
        seen.append("usage \(try await tenant.usage(.operator).messagesToday)")
        return seen
    }

    /// The corpus posted one message per `post` (only the last ticket awaited), then a clean stop:
    /// the tenant directory is at most half the raw text, and everything comes back on reopening.
    @Test func corpusCompressesToHalfItsTextAfterACleanStop() async throws {
        try await TemporaryDirectory.with { dir in
            let messages = try Self.corpus()
            #expect(messages.count > 20_000)
            let rawBytes = messages.reduce(0) { $0 + $1.text.utf8.count }
            #expect(rawBytes == 932_018)
            let registry = try await Self.registry(dir.path)
            let (tenant, alice, created) = try await EngineFixtures.owner(registry, subdomain: "corpus")
            var last: PostTicket?
            for message in messages {
                last = try await tenant.post(alice, room: message.room, text: message.text)
            }
            _ = try await tenant.commit(try #require(last))
            let before = try await Self.observe(tenant)
            await registry.shutdown()

            let size = directorySize(dir.path + "/tenant_\(created.metadata.tenantID)")
            #expect(Double(size) <= 0.5 * Double(rawBytes), "directory \(size) bytes for \(rawBytes) bytes of text")
            let reopened = try await Self.registry(dir.path)
            let again = try await reopened.tenant(id: created.metadata.tenantID)
            #expect(try await Self.observe(again) == before)
            await reopened.shutdown()
        }
    }

    /// Checkpoints taken in the background every 16 KiB of log: one checkpoint file and few segments
    /// are left, and both a crash (a copy of the live directory) and a clean restart give everything back.
    @Test func checkpointsTakenByLogSizeKeepEverythingAcrossRestarts() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path, checkpointBytes: 16 * 1024)
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            let id = created.metadata.tenantID
            let tenant = try await registry.tenant(id: id)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            for index in 1...3000 {
                _ = try await tenant.postAndCommit(
                    alice,
                    room: "r\(index % 3)",
                    text: "message number \(index) of many"
                )
                if index % 500 == 0 { _ = try await tenant.addUser(alice, name: "user\(index)", role: .member) }
            }
            // A background checkpoint may still be running (its new file beside the old one for a moment):
            // wait for it on the tenant's own flag, with a deadline, before counting files.
            try await waitUntilAsync("the background checkpoint to finish") { await !tenant.checkpoints.running }
            let checkpoints = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/tenant_\(id)/checkpoint")
            #expect(checkpoints.filter { $0.hasSuffix(".ckpt") }.count == 1, "\(checkpoints)")
            let segments = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/tenant_\(id)/wal")
            #expect(segments.count <= 3, "covered segments were dropped: \(segments)")
            let before = try await Self.observe(tenant)
            // A crash (a copy taken with no clean stop) recovers from the newest checkpoint and the log
            // after it, which holds one more message.
            let copy = dir.path + "/crash/tenant_\(id)"
            try FileManager.default.createDirectory(atPath: dir.path + "/crash", withIntermediateDirectories: true)
            try await tenant.checkpoint()
            _ = try await tenant.postAndCommit(alice, room: "r0", text: "after the checkpoint")
            try FileManager.default.copyItem(atPath: dir.path + "/tenant_\(id)", toPath: copy)
            let expected = try await Self.observe(tenant)
            #expect(expected.count == before.count + 1)
            await registry.shutdown()
            let crashed = try await Tenant.open(
                path: copy,
                configuration: Self.configuration(dir.path),
                logger: Logger.quiet
            )
            #expect(try await Self.observe(crashed) == expected)
            await crashed.close()
            // A clean restart of the original directory gives the same.
            let reopened = try await Self.registry(dir.path, checkpointBytes: 16 * 1024)
            #expect(try await Self.observe(try await reopened.tenant(id: id)) == expected)
            await reopened.shutdown()
        }
    }

    static func configuration(_ path: String) -> EngineConfiguration {
        var configuration = EngineConfiguration(dataDirectory: path, fsync: .no)
        configuration.defaultPlan = .enterprise
        return configuration
    }

    /// A crash at each step of a tenant's first checkpoint leaves a directory that recovers whole and
    /// takes writes: before the rename (a whole or a torn temp file), after it (every segment still
    /// there), half way through dropping the covered segments, and once all of them are dropped.
    @Test func aCrashAtAnyStepOfACheckpointRecoversEverything() async throws {
        try await TemporaryDirectory.with { dir in
            // Several segments: the log rolls to a new one past 1 KiB.
            let registry = try await Self.registry(dir.path, segmentSize: 1024)
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            let id = created.metadata.tenantID
            let path = dir.path + "/tenant_\(id)"
            let tenant = try await registry.tenant(id: id)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            for index in 1...400 { _ = try await tenant.postAndCommit(alice, room: "r", text: "m\(index)") }
            let expected = try await Self.observe(tenant)
            let fileManager = FileManager.default
            let before = dir.path + "/before"
            try fileManager.copyItem(atPath: path, toPath: before)
            try await tenant.checkpoint()
            let after = dir.path + "/after"
            try fileManager.copyItem(atPath: path, toPath: after)
            await registry.shutdown()
            let checkpointName = try #require(try fileManager.contentsOfDirectory(atPath: after + "/checkpoint").first)
            let segmentNames = try fileManager.contentsOfDirectory(atPath: before + "/wal").filter {
                $0.hasSuffix(".wal")
            }.sorted()
            #expect(segmentNames.count >= 2, "\(segmentNames)")

            var trials: [(String, (String) throws -> Void)] = []
            trials.append(
                (
                    "temp file only",
                    { trial in
                        try fileManager.createDirectory(
                            atPath: trial + "/checkpoint",
                            withIntermediateDirectories: true
                        )
                        try fileManager.copyItem(
                            atPath: after + "/checkpoint/" + checkpointName,
                            toPath: trial + "/checkpoint/" + checkpointName + ".tmp"
                        )
                    }
                )
            )
            trials.append(
                (
                    "torn temp file",
                    { trial in
                        try fileManager.createDirectory(
                            atPath: trial + "/checkpoint",
                            withIntermediateDirectories: true
                        )
                        let bytes = try Data(contentsOf: URL(fileURLWithPath: after + "/checkpoint/" + checkpointName))
                        try bytes.prefix(bytes.count / 2).write(
                            to: URL(fileURLWithPath: trial + "/checkpoint/" + checkpointName + ".tmp")
                        )
                    }
                )
            )
            trials.append(
                (
                    "renamed, no segment dropped",
                    { trial in
                        try fileManager.createDirectory(
                            atPath: trial + "/checkpoint",
                            withIntermediateDirectories: true
                        )
                        try fileManager.copyItem(
                            atPath: after + "/checkpoint/" + checkpointName,
                            toPath: trial + "/checkpoint/" + checkpointName
                        )
                    }
                )
            )
            trials.append(
                (
                    "half the segments dropped",
                    { trial in
                        try fileManager.createDirectory(
                            atPath: trial + "/checkpoint",
                            withIntermediateDirectories: true
                        )
                        try fileManager.copyItem(
                            atPath: after + "/checkpoint/" + checkpointName,
                            toPath: trial + "/checkpoint/" + checkpointName
                        )
                        for name in segmentNames.prefix(max(1, segmentNames.count / 2)) {
                            try fileManager.removeItem(atPath: trial + "/wal/" + name)
                        }
                    }
                )
            )
            trials.append(
                (
                    "every segment dropped",
                    { trial in
                        try fileManager.createDirectory(
                            atPath: trial + "/checkpoint",
                            withIntermediateDirectories: true
                        )
                        try fileManager.copyItem(
                            atPath: after + "/checkpoint/" + checkpointName,
                            toPath: trial + "/checkpoint/" + checkpointName
                        )
                        for name in segmentNames {
                            try fileManager.removeItem(atPath: trial + "/wal/" + name)
                        }
                    }
                )
            )
            for (index, (label, damage)) in trials.enumerated() {
                let trial = dir.path + "/trial\(index)"
                try fileManager.copyItem(atPath: before, toPath: trial)
                try damage(trial)
                let recovered = try await Tenant.open(
                    path: trial,
                    configuration: Self.configuration(dir.path),
                    logger: Logger.quiet
                )
                #expect(try await Self.observe(recovered) == expected, "\(label)")
                // And it takes writes after recovering.
                let alice2 = try await recovered.authenticate(user: "alice", token: created.ownerToken)
                #expect(try await recovered.postAndCommit(alice2, room: "r", text: "next") == 401, "\(label)")
                await recovered.close()
                let reopened = try await Tenant.open(
                    path: trial,
                    configuration: Self.configuration(dir.path),
                    logger: Logger.quiet
                )
                #expect(
                    try await reopened.history(.operator, room: "r", after: 400, before: nil, limit: 5).map(\.text) == [
                        "next"
                    ],
                    "\(label)"
                )
                await reopened.close()
            }
        }
    }
}

@Suite("Activation and passivation")
struct PassivationTests {
    final class ManualClock: Sendable {
        let now = Mutex<Int64>(1_795_000_000_000)
        func advance(seconds: Int64) { self.now.withLock { $0 += seconds * 1000 } }
    }

    @Test func idleTenantsCloseAndComeBackWhole() async throws {
        try await TemporaryDirectory.with { dir in
            let clock = ManualClock()
            var configuration = EngineConfiguration(dataDirectory: dir.path, fsync: .no)
            configuration.adminToken = "operator-token-0123456789abcdef-0123"
            configuration.idleSeconds = 300
            configuration.clock = { clock.now.withLock { $0 } }
            let registry = TenantRegistry(configuration: configuration, logger: Logger.quiet)
            try await registry.bootstrap()
            let a = try await registry.createTenant(name: "A", subdomain: "tenant-a", plan: .enterprise, owner: "alice")
            let b = try await registry.createTenant(name: "B", subdomain: "tenant-b", plan: .enterprise, owner: "bob")
            let tenantA = try await registry.tenant(id: a.metadata.tenantID)
            let alice = try await tenantA.authenticate(user: "alice", token: a.ownerToken)
            for index in 1...50 { _ = try await tenantA.postAndCommit(alice, room: "r", text: "m\(index)") }
            let tenantB = try await registry.tenant(id: b.metadata.tenantID)
            tenantB.retain()  // a connection holds B
            #expect(await registry.activeCount == 2)
            clock.advance(seconds: 299)
            #expect(await registry.passivateIdleTenants() == 0)
            clock.advance(seconds: 2)
            #expect(await registry.passivateIdleTenants() == 1)
            #expect(await registry.activeCount == 1)
            #expect(tenantA.isClosed)
            #expect(!tenantB.isClosed)
            // Closing wrote a checkpoint; the next use opens it again with everything.
            let checkpoints = try FileManager.default.contentsOfDirectory(
                atPath: dir.path + "/tenant_\(a.metadata.tenantID)/checkpoint"
            )
            #expect(checkpoints.count == 1)
            let reopened = try await registry.tenant(id: a.metadata.tenantID)
            #expect(reopened !== tenantA)
            let alice2 = try await reopened.authenticate(user: "alice", token: a.ownerToken)
            #expect(try await reopened.history(alice2, room: "r", after: 0, before: nil, limit: 100).count == 50)
            #expect(try await reopened.postAndCommit(alice2, room: "r", text: "again") == 51)
            tenantB.release()
            clock.advance(seconds: 301)
            #expect(await registry.passivateIdleTenants() == 2)
            await registry.shutdown()
        }
    }

    @Test func startUpOpensNoTenant() async throws {
        try await TemporaryDirectory.with { dir in
            var configuration = EngineConfiguration(dataDirectory: dir.path, fsync: .no)
            configuration.adminToken = "operator-token-0123456789abcdef-0123"
            var registry = TenantRegistry(configuration: configuration, logger: Logger.quiet)
            try await registry.bootstrap()
            var ids: [String] = []
            for index in 0..<40 {
                ids.append(
                    try await registry.createTenant(name: "t", subdomain: "sub-\(index)", plan: nil, owner: "o")
                        .metadata.tenantID
                )
            }
            await registry.shutdown()
            for removeCatalog in [false, true] {
                if removeCatalog { try FileManager.default.removeItem(atPath: dir.path + "/catalog") }
                registry = TenantRegistry(configuration: configuration, logger: Logger.quiet)
                try await registry.bootstrap()
                #expect(await registry.activeCount == 0, "catalog removed: \(removeCatalog)")
                #expect(await registry.tenantCount == 40)
                #expect(await registry.resolve("sub-7") == ids[7])
                _ = try await registry.tenant(id: ids[7])
                #expect(await registry.activeCount == 1)
                await registry.shutdown()
            }
        }
    }
}
