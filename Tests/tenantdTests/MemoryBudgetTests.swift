import EngineTestSupport
import Foundation
import Logging
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// `--maxmemory`: messages past the budget leave memory for the tenant's cold store and come back
/// through the chunk cache, unchanged, in HISTORY, in checkpoints and across restarts.
@Suite("The memory budget")
struct MemoryBudgetTests {
    /// The corpus's texts, `rounds` times over, dealt over three rooms, with a few authors and times.
    static func posts(rounds: Int = 1) throws -> [(room: String, message: Message)] {
        var seqs: [String: UInt64] = [:]
        let corpus = try CheckpointTests.corpus()
        return (0..<rounds).flatMap { _ in corpus }.enumerated().map { index, entry in
            let room = ["general", "random", "support"][index % 3]
            let seq = seqs[room, default: 0] + 1
            seqs[room] = seq
            let message = Message(
                seq: seq,
                timestamp: 1_795_000_000_000 + Int64(index) * 250,
                user: "user-\(index % 7)",
                text: entry.text
            )
            return (room, message)
        }
    }

    /// The largest a room's tail (its unsealed chunk) can be, as the budget counts it.
    static let maxTailBytes = EngineLimits.roomChunkTextBytes + 16 * EngineLimits.roomChunkMessages + 65_536

    /// The message bytes the budget counts for every room, which must equal what the store counted.
    static func resident(_ rooms: [String: Room]) -> Int {
        rooms.values.reduce(0) { $0 + $1.residentBytes }
    }

    @Test func roomsOverTheBudgetKeepTheirNewestChunksAndReadTheRestBackUnchanged() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let budget = MemoryBudget(maxMemory: 256 << 10)
        let posts = try Self.posts()
        var state = TenantState(cold: ColdStore(budget: budget, directory: directory.path, logger: nil))
        var worst = 0
        for post in posts {
            try state.apply(.message(room: post.room, post.message))
            worst = max(worst, budget.residentBytes)
        }
        // The store's count is the rooms' own, and it never went past the limit by more than the
        // tails, which stay.
        #expect(budget.residentBytes == Self.resident(state.rooms))
        #expect(worst <= budget.limit + 3 * Self.maxTailBytes, "\(worst) bytes for a limit of \(budget.limit)")
        // Every sealed chunk is compressed in memory or cold; the oldest went cold first.
        for room in state.rooms.values {
            #expect(room.coldChunkCount > 0 && room.compressedChunkCount > 0)
            #expect(room.coldChunkCount + room.compressedChunkCount >= room.chunkCount - 1)
            #expect((0..<room.coldChunkCount).allSatisfy { room.isCold(chunk: $0) })
        }

        let byRoom = Dictionary(grouping: posts, by: \.room).mapValues { $0.map(\.message) }
        for (name, expected) in byRoom {
            let room = try #require(state.rooms[name])
            #expect(try room.allMessages() == expected)
            // Pages across chunk edges, from the cache or read back.
            var generator = SystemRandomNumberGenerator()
            for _ in 0..<200 {
                let limit = Int.random(in: 1...120, using: &generator)
                let edge = UInt64.random(in: 0...UInt64(expected.count + 2), using: &generator)
                let after = try room.history(after: edge, before: nil, limit: limit)
                let start = Int(min(edge, UInt64(expected.count)))
                #expect(after == Array(expected[start..<min(expected.count, start + limit)]))
                let before = try room.history(after: nil, before: edge, limit: limit)
                let end = edge == 0 ? 0 : Int(min(edge - 1, UInt64(expected.count)))
                #expect(before == Array(expected[max(0, end - limit)..<end]))
            }
        }
        #expect(budget.cachedBytes <= budget.cacheCapacity)

        // Dropping the tenant's rooms and store gives its bytes back to the budget.
        state = TenantState()
        #expect(budget.residentBytes == 0)
    }

    @Test func aCheckpointStreamedFromColdChunksDecodesToTheSameRooms() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let budget = MemoryBudget(maxMemory: 256 << 10)
        let posts = try Self.posts(rounds: 2)
        var state = TenantState(cold: ColdStore(budget: budget, directory: directory.path, logger: nil))
        state.metadata = TenantMetadata(
            tenantID: "t1",
            name: "T",
            subdomain: "t",
            plan: .free,
            limits: Plan.free.defaultLimits,
            now: 0
        )
        for post in posts { try state.apply(.message(room: post.room, post.message)) }
        #expect(state.rooms.values.contains { $0.coldChunkCount > 0 })

        let file = try Checkpoint.encode(state, lsn: 42)
        // Streamed: the header leaves the block count open, and the body took several blocks.
        #expect(Array(file[16..<20]) == [0xFF, 0xFF, 0xFF, 0xFF])
        let (body, lsn) = try Checkpoint.container(bytes: file, path: "streamed.ckpt")
        #expect(lsn == 42 && body.count > Checkpoint.streamBlockSize)
        #expect(body == (try Checkpoint.body(state)))

        let expected = Dictionary(grouping: posts, by: \.room).mapValues { $0.map(\.message) }
        let (plain, _) = try Checkpoint.decode(bytes: file, path: "streamed.ckpt")
        #expect(try plain.rooms.mapValues { try $0.allMessages() } == expected)
        #expect(plain.rooms.values.allSatisfy { $0.coldChunkCount == 0 })

        // Decoded under a second tight budget: its rooms go cold as they load, and read back whole.
        let second = MemoryBudget(maxMemory: 256 << 10)
        let store = ColdStore(budget: second, directory: directory.path, logger: nil)
        let (loaded, _) = try Checkpoint.decode(bytes: file, path: "streamed.ckpt", cold: store)
        #expect(loaded.rooms.values.contains { $0.coldChunkCount > 0 })
        #expect(second.residentBytes == Self.resident(loaded.rooms))
        #expect(second.residentBytes <= second.limit + 3 * Self.maxTailBytes)
        #expect(try loaded.rooms.mapValues { try $0.allMessages() } == expected)
    }

    static func registry(
        _ path: String,
        strategy: IsolationStrategy,
        maxMemory: Int
    ) async throws -> TenantRegistry {
        try await EngineFixtures.registry(path, fsync: .no) {
            $0.checkpointBytes = 256 << 10
            $0.isolation = strategy
            $0.maxMemory = maxMemory
        }
    }

    /// A tenant posting far more than the budget through the engine, with checkpoints every 256 KiB
    /// of log: its messages in memory stay within the limit (plus the rooms' tails), every message
    /// comes back through HISTORY, and so it does after a restart that loads it under the budget.
    @Test(arguments: [IsolationStrategy.database, .shared])
    func aTenantPostingPastTheBudgetStaysWithinItAndLosesNothing(strategy: IsolationStrategy) async throws {
        try await TemporaryDirectory.with { dir in
            let maxMemory = 512 << 10
            let posts = try Self.posts(rounds: 2)
            let registry = try await Self.registry(dir.path, strategy: strategy, maxMemory: maxMemory)
            let budget = try #require(registry.memory)
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            let id = created.metadata.tenantID
            let tenant = try await registry.tenant(id: id)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            var worst = 0
            for (index, post) in posts.enumerated() {
                let ticket = try await tenant.post(alice, room: post.room, text: post.message.text)
                if index % 64 == 63 || index == posts.count - 1 { _ = try await tenant.commit(ticket) }
                worst = max(worst, budget.residentBytes)
            }
            try await tenant.checkpoint()
            let seen = try await CheckpointTests.observe(tenant)
            let texts = seen.filter { !$0.hasPrefix("room ") && !$0.hasPrefix("user ") && !$0.hasPrefix("usage ") }
            #expect(texts.count == posts.count)
            let postedBytes = posts.reduce(0) { $0 + $1.message.text.utf8.count + 16 }
            #expect(postedBytes > 4 * budget.limit)
            #expect(worst <= budget.limit + 3 * Self.maxTailBytes, "\(worst) bytes for a limit of \(budget.limit)")
            await registry.shutdown()
            // Closed, the tenant gives its bytes back at once, though this test still holds it.
            #expect(budget.residentBytes == 0)
            #expect(tenant.isClosed)

            let reopened = try await Self.registry(dir.path, strategy: strategy, maxMemory: maxMemory)
            let again = try await reopened.tenant(id: id)
            #expect(try await CheckpointTests.observe(again) == seen)
            let after = try #require(reopened.memory)
            #expect(after.residentBytes > 0)
            #expect(after.residentBytes <= after.limit + 3 * Self.maxTailBytes)
            await reopened.shutdown()
        }
    }

    /// The server as an operator runs it: `--maxmemory 32mb`, 64 MB of text posted over three
    /// rooms. The messages' share stays within half the budget (the metrics say so), the process
    /// grows by well under what it was sent, and the oldest messages come back as they were posted.
    @Test func theServerKeepsItsMessagesWithinMaxmemoryAndServesTheOldestBack() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let corpus = try CheckpointTests.corpus().map(\.text)
        var texts: [String] = []
        var next = 0
        for _ in 0..<64 {
            var text = ""
            while text.utf8.count < 16_000 {
                text += corpus[next % corpus.count] + "\n"
                next += 1
            }
            texts.append(text)
        }
        let (running, metricsPort) = try OperationsTests.startWithMetrics(
            dataDirectory: dir.path + "/data",
            arguments: ["--maxmemory", "32mb"]
        )
        let admin = try running.operatorClient()
        #expect(try admin.call("CONFIG", "GET", "maxmemory").fields?["maxmemory"]?.string == "33554432")
        let owner = try running.login(
            "alice@acme",
            try admin.createTenant(name: "A", subdomain: "acme", plan: "enterprise").token
        )
        let before = running.residentBytes()
        var posted = 0
        for batch in 0..<40 {
            let replies = try owner.pipeline(
                (0..<100).map { index in
                    ["POST", "room-\(index % 3)", texts[(batch * 100 + index) % texts.count]]
                }
            )
            #expect(replies.allSatisfy { $0.int != nil }, "\(replies.first { $0.int == nil } as Any)")
            posted += (0..<100).reduce(0) { $0 + texts[(batch * 100 + $1) % texts.count].utf8.count }
        }
        let grown = running.residentBytes() - before
        #expect(grown < posted * 5 / 8, "grew by \(grown) bytes for \(posted) posted")

        let metrics = try OperationsTests.httpGet(port: metricsPort, path: "/metrics")
        func gauge(_ name: String) -> Int? {
            metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap {
                Double($0.split(separator: " ").last ?? "").map { Int($0) }
            }
        }
        #expect(gauge("tenantd_memory_messages_limit_bytes") == 16 << 20, "\(metrics)")
        let messages = try #require(gauge("tenantd_memory_messages_bytes"))
        #expect(messages > 0 && messages <= (16 << 20) + 3 * Self.maxTailBytes, "\(messages)")
        #expect(gauge("tenantd_memory_chunk_cache_bytes") != nil)

        // The oldest pages come back from the cold store exactly as posted.
        for room in 0..<3 {
            let page = try owner.call("HISTORY", "room-\(room)", "AFTER", "0", "LIMIT", "4")
            let got = page.elements?.compactMap { $0.elements?[3].string }
            let expected = (0..<4).map { texts[(room + 3 * $0) % texts.count] }
            #expect(got == expected, "room-\(room)")
        }
        #expect(throws: TenantdProcessError.self) {
            _ = try TenantdProcess(dataDirectory: dir.path + "/other", arguments: ["--maxmemory", "1mb"])
        }
    }
}
