import Foundation
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// kill -9 at random moments while several clients write pipelined to several tenants under
/// `--fsync always`: every acknowledged message survives, every room stays a gap-free 1..n, and
/// every message present is the one sent with that seq.
@Suite("Crash trials", .serialized)
struct CrashTrialTests {
    struct Writer: Sendable {
        var user: String
        var token: String
        var room: String
    }

    @Test func killNineAtRandomMomentsLosesNothingAcknowledged() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        // Small checkpoints, so crashes also land inside checkpoints and segment rolls.
        let environment = ["TENANT_CHECKPOINT_BYTES": "8192"]
        var server = try TenantdProcess(
            dataDirectory: data,
            arguments: ["--fsync", "always"],
            environment: environment
        )
        let admin = try server.client()
        #expect(try admin.call("AUTH", server.adminToken()) == .simple("OK"))
        var writers: [Writer] = []
        for tenant in 0..<3 {
            let reply = try admin.call(
                "TENANT",
                "CREATE",
                "T\(tenant)",
                "tenant-\(tenant)",
                "PLAN",
                "enterprise",
                "OWNER",
                "o"
            )
            let token = try #require(reply.fields?["owner_token"]?.string)
            for room in 0..<2 { writers.append(Writer(user: "o@tenant-\(tenant)", token: token, room: "room\(room)")) }
        }
        /// Per writer: the texts sent, by seq, once known (acknowledged) or inferred (sent in order).
        var sent = [[String]](repeating: [], count: writers.count)
        var acknowledged = [Int](repeating: 0, count: writers.count)
        var generator = SystemRandomNumberGenerator()
        let trials = 20
        for trial in 0..<trials {
            let port = server.port
            let results = Mutex([(acked: Int, texts: [String])](repeating: (0, []), count: writers.count))
            let base = sent.map(\.count)
            let stop = Mutex(false)
            let mismatches = Mutex([String]())
            let finished = Mutex(0)
            let threads = writers.enumerated().map { index, writer in
                Thread {
                    defer { finished.withLock { $0 += 1 } }
                    guard let client = try? RESPTestClient(port: port),
                        (try? client.call("AUTH", writer.user, writer.token)) == .simple("OK")
                    else { return }
                    var texts: [String] = []
                    var acked = 0
                    burst: while !stop.withLock({ $0 }) {
                        let batch = (0..<200).map { "t\(trial) w\(index) n\(texts.count + $0)" }
                        texts += batch
                        results.withLock { $0[index].texts = texts }
                        guard
                            (try? client.send(raw: batch.flatMap { RESPTestClient.encode(["POST", writer.room, $0]) }))
                                != nil
                        else { break }
                        for _ in batch {
                            guard let reply = try? client.read(), let seq = reply.int else { break burst }
                            acked += 1
                            if seq != Int64(base[index] + acked) {
                                mismatches.withLock { $0.append("w\(index) seq \(seq)") }
                            }
                            results.withLock { $0[index].acked = acked }
                        }
                    }
                }
            }
            for thread in threads { thread.start() }
            // Every writer is writing (on a loaded machine connecting can take longer than the
            // random delay), then the kill comes at a random moment.
            try waitUntil("every writer of trial \(trial) to have an acknowledgement") {
                results.withLock { $0.allSatisfy { $0.acked > 0 } }
            }
            usleep(UInt32.random(in: 20_000...300_000, using: &generator))
            server.stop(signal: SIGKILL)
            stop.withLock { $0 = true }
            // The writers see their connections close and stop.
            try waitUntil("the writers of trial \(trial) to stop") { finished.withLock { $0 } == writers.count }
            let outcome = results.withLock { $0 }
            #expect(mismatches.withLock { $0 }.isEmpty, "trial \(trial): replies out of order")
            for index in writers.indices {
                sent[index] += outcome[index].texts
                acknowledged[index] = base[index] + outcome[index].acked
            }
            server = try TenantdProcess(
                dataDirectory: data,
                arguments: ["--fsync", "always"],
                environment: environment
            )
            for (index, writer) in writers.enumerated() {
                let reader = try server.login(writer.user, writer.token)
                var present: [String] = []
                var after = 0
                while true {
                    let page = try #require(
                        try reader.call("HISTORY", writer.room, "AFTER", String(after), "LIMIT", "1000").elements
                    )
                    if page.isEmpty { break }
                    for entry in page {
                        let fields = try #require(entry.elements)
                        #expect(
                            fields[0].int == Int64(present.count + 1),
                            "trial \(trial): room \(writer.room) has a gap"
                        )
                        present.append(try #require(fields[3].string))
                    }
                    after = present.count
                }
                #expect(
                    present.count >= acknowledged[index],
                    "trial \(trial) writer \(index): \(present.count) present, \(acknowledged[index]) acknowledged"
                )
                #expect(
                    present == Array(sent[index].prefix(present.count)),
                    "trial \(trial) writer \(index): a message differs"
                )
                // What was sent but not kept is dropped from the expectation: its seq goes to the next message.
                sent[index] = Array(sent[index].prefix(present.count))
                acknowledged[index] = present.count
            }
        }
        #expect(acknowledged.allSatisfy { $0 > 0 })
        #expect(server.stop() == 0)
    }

    @Test func sigtermUnderLoadAnswersWhatWasReadFlushesAndExitsCleanly() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data, arguments: ["--fsync", "always"])
        let admin = try server.operatorClient()
        var writers: [Writer] = []
        for tenant in 0..<2 {
            let created = try admin.createTenant(name: "T\(tenant)", subdomain: "team-\(tenant)", plan: "enterprise")
            for room in 0..<2 {
                writers.append(Writer(user: "alice@team-\(tenant)", token: created.token, room: "r\(room)"))
            }
        }
        let acked = Mutex([Int](repeating: 0, count: writers.count))
        let problems = Mutex([String]())
        let finished = Mutex(0)
        for (index, writer) in writers.enumerated() {
            let client = try server.login(writer.user, writer.token)
            Thread {
                defer { finished.withLock { $0 += 1 } }
                var count = 0
                while true {
                    let batch = (0..<100).map { ["POST", writer.room, "w\(index) m\(count + $0)"] }
                    guard (try? client.send(raw: batch.flatMap { RESPTestClient.encode($0) })) != nil else { return }
                    for _ in batch {
                        let reply: RESPReply
                        do {
                            reply = try client.read()
                        } catch {
                            return  // the server closed the connection after its last answer
                        }
                        guard reply.int == Int64(count + 1) else {
                            problems.withLock { $0.append("writer \(index): reply \(reply) for seq \(count + 1)") }
                            return
                        }
                        count += 1
                        acked.withLock { $0[index] = count }
                    }
                }
            }.start()
        }
        try waitUntil("every writer to have 300 acknowledged") { acked.withLock { $0.allSatisfy { $0 >= 300 } } }
        let started = Date()
        #expect(server.stop(signal: SIGTERM) == 0)
        let took = Date().timeIntervalSince(started)
        #expect(took < 10, "SIGTERM took \(took) s")
        try waitUntil("the writers to see the end") { finished.withLock { $0 } == writers.count }
        #expect(problems.withLock { $0 }.isEmpty, "\(problems.withLock { $0 })")
        // Every POST the server read before it stopped was answered: what is durable is exactly
        // what was acknowledged, in order, with the texts sent.
        server = try TenantdProcess(dataDirectory: data)
        for (index, writer) in writers.enumerated() {
            let reader = try server.login(writer.user, writer.token)
            let count = acked.withLock { $0[index] }
            var texts: [String] = []
            var after = 0
            while true {
                let page = try #require(
                    try reader.call("HISTORY", writer.room, "AFTER", String(after), "LIMIT", "1000").elements
                )
                if page.isEmpty { break }
                texts += page.compactMap { $0.elements?[3].string }
                after = texts.count
            }
            #expect(texts.count == count, "writer \(index): \(texts.count) present, \(count) acknowledged")
            #expect(texts == (0..<texts.count).map { "w\(index) m\($0)" }, "writer \(index): texts differ")
        }
        #expect(server.stop() == 0)
    }
}
