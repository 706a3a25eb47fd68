import EngineTestSupport
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// The shared log of `schema` and `shared` is checkpointed as a tenant's own log is: by size, in
/// the background, every tenant at its own cut in one file, and the segments it covers dropped.
@Suite("Shared log checkpoints")
struct SharedLogCheckpointTests {
    static func segments(_ data: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: data + "/shared/wal").filter { $0.hasSuffix(".wal") }
            .sorted()
    }

    static func checkpoints(_ data: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: data + "/shared/checkpoint")) ?? [])
            .filter { $0.hasSuffix(".ckpt") }
    }

    @Test(arguments: [IsolationStrategy.schema, .shared])
    func checkpointsBySizeDropSegmentsAndRestartWhole(strategy: IsolationStrategy) async throws {
        try await TemporaryDirectory.with { dir in
            let data = dir.path
            var registry = try await StorageCrashTests.registry(data, strategy: strategy, checkpointBytes: 8 << 10)
            try await StorageCrashTests.populate(registry)
            let id = try #require(await registry.resolve("team0"))
            for round in 1...2 {
                let tenant = try await registry.tenant(id: id)
                let firstCheckpoints = Self.checkpoints(data)
                for index in 1...300 {
                    _ = try await tenant.postAndCommit(.operator, room: "busy", text: "round \(round) message \(index)")
                }
                // A checkpoint newer than the last one comes by itself, and the segments before it go.
                try await waitUntilAsync("a new shared checkpoint") {
                    let now = Self.checkpoints(data)
                    return now.count == 1 && now != firstCheckpoints
                }
                let checkpoint = try #require(Self.checkpoints(data).first)
                let covered = try #require(UInt64(checkpoint.dropLast(".ckpt".count)))
                // Every segment before the checkpoint is gone (all of them when nothing came after).
                let segments = try Self.segments(data)
                if let first = segments.first.flatMap({ UInt64($0.dropLast(".wal".count)) }) {
                    #expect(first > 1 && first <= covered + 1, "segments \(segments), checkpoint \(covered)")
                }
                // USAGE counts the tenant's share of the checkpoint and its records after it.
                let usage = try await tenant.usage(.operator)
                #expect(usage.storageBytes > 0)
                #expect(usage.storageBytes < directorySize(data + "/shared"))
                let expected = try await StorageCrashTests.observe(registry)
                #expect(expected.keys.sorted() == ["team0", "team1", "team2"])
                // Stopped without a last checkpoint: the file and the segments after it restore it all.
                await registry.shutdown(checkpoint: false)
                let report = TenantVerifier.verifySharedLog(dataDirectory: data)
                #expect(report.problem == nil)
                #expect(report.checkpointLSN == covered)
                #expect(report.tenants == 3)
                registry = try await StorageCrashTests.registry(data, strategy: strategy, checkpointBytes: 8 << 10)
                #expect(try await StorageCrashTests.observe(registry) == expected)
            }
            await registry.shutdown()
        }
    }

    /// Checkpoints taken while three tenants post without pause and others are created and
    /// deleted: each tenant is captured at its own cut above the checkpoint's, and a restart from
    /// the newest checkpoint and the log after it serves every acknowledged message, in seq order.
    @Test(arguments: [IsolationStrategy.schema, .shared])
    func checkpointsUnderLoadKeepEveryAcknowledgedMessage(strategy: IsolationStrategy) async throws {
        try await TemporaryDirectory.with { dir in
            let data = dir.path
            let registry = try await StorageCrashTests.registry(data, strategy: strategy, checkpointBytes: 2 << 10)
            var tenants: [String: Tenant] = [:]
            for index in 0..<3 {
                let created = try await registry.createTenant(
                    name: "L\(index)",
                    subdomain: "load\(index)",
                    plan: nil,
                    owner: "owner"
                )
                tenants[created.metadata.subdomain] = try await registry.tenant(id: created.metadata.tenantID)
            }
            let acknowledged = try await withThrowingTaskGroup(of: (String, [String]).self) { group in
                for (subdomain, tenant) in tenants {
                    group.addTask {
                        // Pipelined, as a client that sends ten POSTs before reading replies: the
                        // log takes records from every tenant while a checkpoint captures them.
                        var texts: [String] = []
                        for batch in 0..<15 {
                            var tickets: [PostTicket] = []
                            for index in 1...10 {
                                let text = "\(subdomain) \(batch * 10 + index)"
                                tickets.append(try await tenant.post(.operator, room: "r", text: text))
                                texts.append(text)
                            }
                            for (offset, ticket) in tickets.enumerated() {
                                #expect(try await tenant.commit(ticket) == UInt64(batch * 10 + offset + 1))
                            }
                        }
                        return (subdomain, texts)
                    }
                }
                group.addTask {
                    for round in 0..<8 {
                        try await Task.sleep(for: .milliseconds(5))
                        try await registry.checkpointAll()
                        let created = try await registry.createTenant(
                            name: "E",
                            subdomain: "extra\(round)",
                            plan: nil,
                            owner: "o"
                        )
                        try await registry.deleteTenant(id: created.metadata.tenantID)
                    }
                    return ("", [])
                }
                var all: [String: [String]] = [:]
                for try await (subdomain, texts) in group where !subdomain.isEmpty { all[subdomain] = texts }
                return all
            }
            #expect(!Self.checkpoints(data).isEmpty)
            await registry.shutdown(checkpoint: false)
            let restarted = try await StorageCrashTests.registry(data, strategy: strategy)
            #expect(await restarted.tenantCount == 3)
            for (subdomain, texts) in acknowledged {
                let tenant = try await restarted.tenant(id: try #require(await restarted.resolve(subdomain)))
                let history = try await tenant.history(.operator, room: "r", after: 0, before: nil, limit: 1000)
                #expect(history.map(\.text) == texts, "\(subdomain)")
                #expect(history.map(\.seq) == (1...150).map(UInt64.init))
            }
            await restarted.shutdown()
        }
    }

    /// A tenant deleted while its users post: no write of it lands after its deletion record, and
    /// the log starts again with the tenant gone and every other tenant whole.
    @Test(arguments: [IsolationStrategy.schema, .shared])
    func aTenantDeletedWhileItsUsersPostStaysDeleted(strategy: IsolationStrategy) async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await StorageCrashTests.registry(dir.path, strategy: strategy)
            let doomed = try await registry.createTenant(name: "D", subdomain: "doomed", plan: nil, owner: "o")
            let kept = try await registry.createTenant(name: "K", subdomain: "kept", plan: nil, owner: "o")
            let tenant = try await registry.tenant(id: doomed.metadata.tenantID)
            let keptTenant = try await registry.tenant(id: kept.metadata.tenantID)
            // The poster goes on until a POST is refused; the deletion starts once 20 are in, so
            // it races POSTs in flight whatever the machine's speed (no sleep stands for a wait).
            final class Counter: Sendable { let value = Atomic<Int>(0) }
            let counter = Counter()
            let refused = try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    for index in 1...1_000_000 {
                        do {
                            _ = try await tenant.postAndCommit(.operator, room: "r", text: "m\(index)")
                            counter.value.add(1, ordering: .relaxed)
                        } catch {
                            return true
                        }
                    }
                    return false
                }
                group.addTask {
                    while counter.value.load(ordering: .relaxed) < 20 { await Task.yield() }
                    try await registry.deleteTenant(id: doomed.metadata.tenantID)
                    return true
                }
                return try await group.reduce(true) { $0 && $1 }
            }
            #expect(refused, "a POST after the deletion was refused")
            #expect(counter.value.load(ordering: .relaxed) >= 20)
            _ = try await keptTenant.postAndCommit(.operator, room: "r", text: "still here")
            await registry.shutdown(checkpoint: false)
            let restarted = try await StorageCrashTests.registry(dir.path, strategy: strategy)
            #expect(await restarted.resolve("doomed") == nil)
            #expect(await restarted.tenantCount == 1)
            let again = try await restarted.tenant(id: kept.metadata.tenantID)
            let history = try await again.history(.operator, room: "r", after: 0, before: nil, limit: 10)
            #expect(history.map(\.text) == ["still here"])
            await restarted.shutdown()
        }
    }

    /// A shared checkpoint is input from disk like any other: crafted counts and ids are refused.
    @Test func aCraftedSharedCheckpointIsRefused() throws {
        var metadata = TenantMetadata(
            tenantID: "abc",
            name: "A",
            subdomain: "abc",
            plan: .free,
            limits: Plan.free.defaultLimits,
            now: 0
        )
        var state = TenantState()
        try state.apply(.metadata(metadata))
        let good = try SharedCheckpoint.encode([.init(id: "abc", cut: 5, state: state)], lsn: 5).bytes
        let (entries, lsn) = try SharedCheckpoint.decode(bytes: good, path: "x")
        #expect(lsn == 5 && entries.map(\.id) == ["abc"] && entries[0].cut == 5)
        // A tenant under another tenant's id, a cut before the checkpoint's, a duplicate, a count
        // past the bytes.
        metadata.tenantID = "other"
        var other = TenantState()
        try other.apply(.metadata(metadata))
        let crafted: [(bytes: [UInt8], reason: String)] = [
            (try SharedCheckpoint.encode([.init(id: "abc", cut: 5, state: other)], lsn: 5).bytes, "metadata"),
            (try SharedCheckpoint.encode([.init(id: "abc", cut: 4, state: state)], lsn: 5).bytes, "cut"),
            (
                try SharedCheckpoint.encode(
                    [.init(id: "abc", cut: 5, state: state), .init(id: "abc", cut: 5, state: state)],
                    lsn: 5
                ).bytes, "tenant id"
            ),
            (try SharedCheckpoint.encode([.init(id: "..a", cut: 5, state: state)], lsn: 5).bytes, "tenant id"),
            (try Checkpoint.encode(body: [0xFF, 0xFF, 0xFF, 0xFF, 0x0F], lsn: 5), "tenant count"),
        ]
        for (bytes, reason) in crafted {
            do {
                _ = try SharedCheckpoint.decode(bytes: bytes, path: "x")
                Issue.record("a crafted shared checkpoint (\(reason)) was accepted")
            } catch let error as WALError {
                #expect("\(error)".contains("invalid value: \(reason)"), "\(error)")
            }
        }
    }
}

/// The catalog file: binary, checksummed, bounded; the JSON one of earlier versions still read.
@Suite("Catalog file")
struct CatalogFileTests {
    static func metadata(_ id: String, subdomain: String) -> TenantMetadata {
        var metadata = TenantMetadata(
            tenantID: id,
            name: "Name ✓ \(id)",
            subdomain: subdomain,
            plan: .pro,
            limits: Plan.pro.defaultLimits,
            now: 1_700_000_000_000
        )
        metadata.updatedAt = 1_700_000_000_123
        metadata.isSuspended = true
        metadata.maxStorageBytes = .max
        metadata.settings = ["region": "eu", "backup_keep": "7"]
        return metadata
    }

    @Test func roundTripsEveryField() throws {
        var catalog = Catalog()
        catalog.insert(Self.metadata("abc", subdomain: "acme"))
        catalog.insert(Self.metadata("def", subdomain: ""))
        let decoded = try #require(Catalog.decode(bytes: try catalog.encoded()))
        #expect(decoded.entries == catalog.entries)
        #expect(decoded.idBySubdomain == ["acme": "abc"])
    }

    @Test func damagedOrCraftedFilesAreRebuilt() throws {
        var catalog = Catalog()
        catalog.insert(Self.metadata("abc", subdomain: "acme"))
        let good = try catalog.encoded()
        var flipped = good
        flipped[flipped.count - 3] ^= 0x40
        // Bodies with a checksum that matches: a count far past the bytes (refused before it sizes
        // anything), an id with '..' in it.
        func framed(_ body: [UInt8]) -> [UInt8] {
            var file = Catalog.magic
            withUnsafeBytes(of: UInt64(body.count).littleEndian) { file.append(contentsOf: $0) }
            withUnsafeBytes(of: CRC32C.mask(CRC32C.checksum(body)).littleEndian) { file.append(contentsOf: $0) }
            return file + body
        }
        var entry = try Array(catalog.encoded()[Catalog.headerSize...])
        let idOffset = 1 + 4
        entry.replaceSubrange(idOffset..<(idOffset + 3), with: Array("..a".utf8))
        #expect(Catalog.decode(bytes: framed(Array(good[Catalog.headerSize...]))) != nil)
        for bytes in [
            Array(good.dropLast()), flipped, framed([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), framed(entry), good + [0],
        ] {
            #expect(Catalog.decode(bytes: bytes) == nil)
        }
    }

    @Test func theJSONCatalogOfEarlierVersionsIsReadThenReplaced() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await StorageCrashTests.registry(dir.path, strategy: .database)
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            await registry.shutdown()
            // The catalog as an earlier version wrote it.
            let catalog = dir.path + "/catalog"
            try FileManager.default.removeItem(atPath: catalog + "/tenants.bin")
            try Data(
                (#"{"version":2,"tenants":["#
                    + String(decoding: try JSONEncoder().encode(created.metadata), as: UTF8.self) + "]}").utf8
            ).write(to: URL(fileURLWithPath: catalog + "/tenants.json"))
            let again = try await StorageCrashTests.registry(dir.path, strategy: .database)
            #expect(await again.resolve("acme") == created.metadata.tenantID)
            #expect(await again.activeCount == 0, "the JSON catalog was read, no tenant opened to rebuild it")
            _ = try await again.createTenant(name: "B", subdomain: "bravo", plan: nil, owner: "bob")
            await again.shutdown()
            #expect(try FileManager.default.contentsOfDirectory(atPath: catalog) == ["tenants.bin"])
        }
    }
}

/// When checkpoints come: after `TENANT_CHECKPOINT_BYTES` of log, or as many bytes as the last
/// checkpoint took if that is more, so rewriting a large state never costs more than the log grew.
@Suite("Checkpoint schedule")
struct CheckpointScheduleTests {
    @Test func aTenantWaitsForAsManyLogBytesAsItsLastCheckpointTook() {
        var schedule = CheckpointSchedule()
        func append(_ lsn: UInt64, _ size: Int) -> Bool {
            schedule.appended(lsn: lsn, size: size, threshold: 1000)
        }
        #expect(!append(1, 600))
        #expect(append(2, 600))
        schedule.bytesAtCapture = schedule.bytesSinceCheckpoint
        schedule.written(cut: 2, size: 10_000)
        #expect(schedule.bytesSinceCheckpoint == 0)
        #expect(!append(3, 5000))
        #expect(!append(4, 4999))
        #expect(append(5, 1))
        schedule.running = true
        #expect(!append(6, 1), "not while one runs")
    }

    @Test func theSharedLogDoesTooAndAsksOnceUntilAnswered() async throws {
        try await TemporaryDirectory.with { dir in
            let writer = try WALWriter(
                directory: dir.path + "/wal",
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .no)
            )
            let asked = Mutex(0)
            let log = SharedLog(
                writer: writer,
                checkpointBytes: 1000,
                appendedSinceCheckpoint: 0,
                lastCheckpointSize: 0
            ) {
                asked.withLock { $0 += 1 }
            }
            let askedCount = { asked.withLock { value in value } }
            let prefix = SharedLogPayload.prefix(for: "abc")
            let record = TenantRecord.userDelete(String(repeating: "u", count: 64))
            var appended: Int64 = 0
            while askedCount() == 0 {
                appended += Int64(try log.append(record, prefix: prefix).size)
            }
            #expect(appended >= 1000)
            // Asked once: more appends do not ask again until the checkpoint ends.
            for _ in 0..<50 { _ = try log.append(record, prefix: prefix) }
            #expect(askedCount() == 1)
            // A checkpoint of 20,000 bytes: the next ask waits for 20,000 bytes of log.
            log.checkpointEnded(consumed: log.bytesSinceCheckpoint, size: 20_000)
            appended = 0
            while askedCount() == 1 {
                appended += Int64(try log.append(record, prefix: prefix).size)
            }
            #expect(appended >= 20_000 && appended < 21_000, "\(appended)")
        }
    }
}
