import Dispatch
import EngineTestSupport
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import RESP
import ServiceLifecycle
import Synchronization
import TenantEngine
import TestSupport
import Testing
import WAL

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// Tenants on the server's event loops and the hot commands run in the channel handler: the
/// replies keep request order, a command the lane does not take sees every POST before it, and a
/// POST is answered only once its record is written under the policy.
@Suite("The synchronous lane", .serialized)
struct SyncLaneTests {
    struct Server {
        let port: Int
        let tenant: CreatedTenant
        let registry: TenantRegistry
        let disk: FaultyFileSystem
        let group: MultiThreadedEventLoopGroup
        let server: TenantServer

        /// A client authenticated as the tenant's owner.
        func owner() throws -> RESPTestClient {
            let client = try RESPTestClient(port: self.port)
            let reply = try client.call("AUTH", "alice@acme", self.tenant.ownerToken)
            guard reply == .simple("OK") else { throw RESPTestClientError.closed }
            return client
        }
    }

    /// Runs `body` against an in-process server whose tenants are placed on `threads` loops.
    static func withServer(
        fsync: FsyncPolicy = .everysec,
        threads: Int = 1,
        turnBudget: Int = LoopTurn.defaultTurnBudget,
        moveConnections: Bool = true,
        maxClients: Int = 10_000,
        _ body: @escaping @Sendable (Server) async throws -> Void
    ) async throws {
        try await TemporaryDirectory.with { dir in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
            let disk = FaultyFileSystem()
            let registry = try await EngineFixtures.registry(dir.path + "/data", fsync: fsync) {
                $0.fileSystem = disk
                $0.placement = EventLoops.placement(group: group, connectionsMove: moveConnections)
            }
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            var configuration = ServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.eventLoopGroup = group
            configuration.limits.turnBudget = turnBudget
            configuration.limits.moveConnections = moveConnections
            configuration.limits.maxClients = maxClients
            try await InProcessServer.run(configuration, registry: registry) { port, server in
                try await body(
                    Server(port: port, tenant: created, registry: registry, disk: disk, group: group, server: server)
                )
            }
            await registry.shutdown()
            try await group.shutdownGracefully()
        }
    }

    static var laneCommands: UInt64 { ServerStats.shared.laneCommands.load(ordering: .relaxed) }
    /// The holds of this server's loops alone (INFO's count is the process's, which other suites
    /// running at the same time add to).
    static func shareHolds(_ server: Server) async throws -> UInt64 {
        var total: UInt64 = 0
        for loop in server.group.makeIterator() {
            total += try await loop.submit { LoopTurn.of(loop).holds }.get()
        }
        return total
    }

    /// `count` pipelined POSTs to `room`, expecting seqs 1...count back in order.
    static func flood(_ client: RESPTestClient, room: String, count: Int) async throws {
        let replies = try await offThePool { try client.pipeline((0..<count).map { ["POST", room, "m\($0)"] }) }
        #expect(replies == (1...count).map { RESPReply.integer(Int64($0)) }, "\(room): every POST answered, in order")
    }

    /// While two tenants are active on one loop, a tenant with many connections flooding gets
    /// its share of each turn and its connections wait their turn; every request of every
    /// connection is still answered, in order. A tenant alone is never held back. With the
    /// server's default budget: the shares are on unless `--turn-budget 0`.
    @Test func aFloodingTenantTakesItsShareOfTheLoopsTurnAndEveryoneIsAnswered() async throws {
        try await Self.withServer { server in
            let flooders = try (0..<4).map { _ in try server.owner() }
            // Alone: no holds, however much it sends.
            let alone = try await Self.shareHolds(server)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, client) in flooders.enumerated() {
                    group.addTask { try await Self.flood(client, room: "alone-\(index)", count: 400) }
                }
                try await group.waitForAll()
            }
            #expect(try await Self.shareHolds(server) == alone, "a tenant alone on its loop is never held")
            // With a second tenant active on the same (only) loop.
            let other = try await server.registry.createTenant(name: "B", subdomain: "bee", plan: nil, owner: "bob")
            let quiet = try RESPTestClient(port: server.port)
            #expect(try quiet.call("AUTH", "bob@bee", other.ownerToken) == .simple("OK"))
            let before = try await Self.shareHolds(server)
            for round in 0..<5 {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (index, client) in flooders.enumerated() {
                        group.addTask { try await Self.flood(client, room: "r\(round)-\(index)", count: 600) }
                    }
                    group.addTask {
                        // The other tenant keeps posting while the flood runs.
                        for batch in 0..<20 {
                            let replies = try await offThePool {
                                try quiet.pipeline((0..<5).map { ["POST", "quiet-\(round)", "q\(batch) \($0)"] })
                            }
                            let first = Int64(batch * 5 + 1)
                            #expect(replies == (first..<first + 5).map { RESPReply.integer($0) })
                        }
                    }
                    try await group.waitForAll()
                }
                if try await Self.shareHolds(server) > before { break }
            }
            let after = try await Self.shareHolds(server)
            #expect(after > before, "the flooding tenant was held to its share while the other was active")
        }
    }

    @Test func hotCommandsRunOnTheLaneInRequestOrderAndTheRestSeeWhatTheyDid() async throws {
        try await Self.withServer { server in
            let client = try server.owner()
            let before = Self.laneCommands
            let replies = try await offThePool {
                try client.pipeline([
                    ["POST", "general", "a"],
                    ["POST", "general", "b"],
                    ["HISTORY", "general"],
                    // Not a hot command: it runs on the connection's task, after both POSTs.
                    ["USAGE"],
                    ["POST", "general", "c"],
                    ["HISTORY", "general", "LIMIT", "1"],
                    ["WHOAMI"],
                    ["PING"],
                    ["ECHO", "x"],
                    ["ROOMS"],
                ])
            }
            #expect(replies[0] == .integer(1))
            #expect(replies[1] == .integer(2))
            guard case .array(let history) = replies[2] else {
                Issue.record("HISTORY: \(replies[2])")
                return
            }
            #expect(history.count == 2, "HISTORY sees both POSTs before it")
            guard case .array(let usage) = replies[3] else {
                Issue.record("USAGE: \(replies[3])")
                return
            }
            let today = usage.firstIndex(of: .bulk(Array("messages_today".utf8))).map { usage[$0 + 1] }
            #expect(today == .integer(2), "the task's command sees the lane's POSTs")
            #expect(replies[4] == .integer(3))
            guard case .array(let last) = replies[5], case .array(let message)? = last.first else {
                Issue.record("HISTORY LIMIT 1: \(replies[5])")
                return
            }
            #expect(message.last?.string == "c")
            #expect(
                replies[6]
                    == .array([
                        .bulk(Array(server.tenant.metadata.tenantID.utf8)), .bulk(Array("alice".utf8)),
                        .bulk(Array("owner".utf8)),
                    ])
            )
            #expect(replies[7] == .simple("PONG"))
            #expect(replies[8] == .bulk(Array("x".utf8)))
            #expect(replies[9] == .array([.array([.bulk(Array("general".utf8)), .integer(3), .integer(3)])]))
            // Nine hot commands (all but USAGE) on the lane, those after USAGE once the task
            // answered it; other suites run no lane.
            #expect(Self.laneCommands - before >= 9)
        }
    }

    /// A push of `kind` for `channel`, as RESP3 sends it.
    static func push(_ kind: String, _ channel: String, _ last: RESPReply) -> RESPReply {
        .push([.bulk(Array(kind.utf8)), .bulk(Array(channel.utf8)), last])
    }

    @Test func subscribeRunsOnTheLaneAndItsConfirmationsKeepRequestOrder() async throws {
        try await Self.withServer { server in
            let client = try RESPTestClient(port: server.port)
            guard case .map = try client.call("HELLO", "3", "AUTH", "alice@acme", server.tenant.ownerToken) else {
                Issue.record("HELLO 3 AUTH refused")
                return
            }
            let before = Self.laneCommands
            let frames = try await offThePool { () -> [RESPReply] in
                try client.send(
                    raw: [
                        ["POST", "general", "a"], ["SUBSCRIBE", "general", "random"], ["PING"],
                        ["POST", "general", "b"],
                    ]
                    .flatMap { RESPTestClient.encode($0) }
                )
                // Three replies, SUBSCRIBE's two confirmations and the push of "b".
                return try (0..<6).map { _ in try client.read() }
            }
            #expect(
                Array(frames.prefix(4)) == [
                    .integer(1), Self.push("subscribe", "general", .integer(1)),
                    Self.push("subscribe", "random", .integer(2)), .simple("PONG"),
                ],
                "the confirmations come in the SUBSCRIBE's place: \(frames)"
            )
            let rest = Array(frames.dropFirst(4))
            #expect(rest.filter { if case .push = $0 { false } else { true } } == [.integer(2)])
            let messages = rest.compactMap { frame -> String? in
                guard case .push(let parts) = frame, parts.first?.string == "message" else { return nil }
                return parts.last?.string
            }
            #expect(messages.count == 1 && messages[0].contains("\"text\":\"b\""), "\(rest)")
            // POST, SUBSCRIBE, PING, POST: the three that are not SUBSCRIBE make three.
            #expect(Self.laneCommands - before >= 4, "SUBSCRIBE ran on the lane")
            // Another connection's POST reaches the subscriber, pushed from the handler.
            let poster = try server.owner()
            #expect(try poster.call("POST", "random", "from elsewhere") == .integer(1))
            guard case .push(let parts) = try await offThePool({ try client.read() }) else {
                Issue.record("no push for the other connection's POST")
                return
            }
            #expect(parts.first?.string == "message" && parts[1].string == "random")
            // UNSUBSCRIBE runs on the task: its confirmation after the lane's reply before it.
            try client.send(raw: [["PING"], ["UNSUBSCRIBE", "general"]].flatMap { RESPTestClient.encode($0) })
            #expect(try client.read() == .simple("PONG"))
            #expect(try client.read() == Self.push("unsubscribe", "general", .integer(1)))
        }
    }

    /// SUBSCRIBE on the connection's task: its tenant delivers the confirmation to the handler,
    /// which it reaches only after the replies before it, even when those wait in the connection's
    /// queue for a client that does not read yet.
    @Test func aSubscribeOnTheTaskWaitsForTheRepliesBeforeIt() async throws {
        try await Self.withServer { server in
            let poster = try server.owner()
            let text = String(repeating: "w", count: 3000)
            let posted = try await offThePool { try poster.pipeline((0..<40).map { _ in ["POST", "general", text] }) }
            #expect(posted.last == .integer(40))
            let client = try server.owner()
            client.shrinkReceiveBuffer()
            let histories = 100
            // USAGE is not a hot command: it and everything after it in the read go to the task.
            // About 12 MB of HISTORY replies: more than the socket buffers and the reply window
            // hold, so the SUBSCRIBE runs while replies still wait in the queue.
            let commands: [[String]] =
                [["USAGE"]] + Array(repeating: ["HISTORY", "general", "LIMIT", "50"], count: histories)
                + [["SUBSCRIBE", "general"], ["PING"]]
            let replies = try await offThePool { () -> [RESPReply] in
                try client.send(raw: commands.flatMap { RESPTestClient.encode($0) })
                return try commands.indices.map { _ in try client.read() }
            }
            guard case .array = replies[0] else {
                Issue.record("USAGE first: \(replies[0])")
                return
            }
            let pages = replies[1...histories].filter {
                if case .array(let page) = $0 { page.count == 40 } else { false }
            }
            #expect(pages.count == histories, "every HISTORY reply before the confirmation")
            #expect(
                replies[histories + 1]
                    == .array([.bulk(Array("subscribe".utf8)), .bulk(Array("general".utf8)), .integer(1)])
            )
            // Subscribed mode: PING's reply is Redis's in that mode.
            #expect(replies[histories + 2] == .array([.bulk(Array("pong".utf8)), .bulk([])]))
        }
    }

    @Test func aPostIsNotAnsweredWhenItsWriteFails() async throws {
        try await Self.withServer { server in
            let client = try server.owner()
            let kept = try await offThePool { try client.call("POST", "general", "kept") }
            #expect(kept == .integer(1))
            let lanesBefore = Self.laneCommands
            server.disk.fail(.write, errno: EIO, times: 1_000)
            let replies = try await offThePool {
                try client.pipeline([["POST", "general", "lost"], ["POST", "general", "lost too"]])
            }
            for reply in replies {
                guard case .error(let message) = reply else {
                    Issue.record("a POST whose write failed was answered \(reply)")
                    continue
                }
                #expect(message.hasPrefix("IOERR"))
            }
            #expect(Self.laneCommands - lanesBefore >= 2, "the POSTs ran on the lane")
            server.disk.clearFaults()
            let history = try await offThePool { try client.call("HISTORY", "general") }
            guard case .array(let messages) = history else {
                Issue.record("HISTORY: \(history)")
                return
            }
            #expect(messages.count == 1, "only the acknowledged message is visible")
        }
    }

    @Test(arguments: [FsyncPolicy.always, .everysec, .no])
    func everyAcknowledgedPostIsInTheLog(fsync: FsyncPolicy) async throws {
        let directory = Mutex("")
        try await Self.withServer(fsync: fsync, threads: 2, moveConnections: false) { server in
            // Two connections, one on each loop: one runs on its tenant's loop, one sends there.
            let clients = try (0..<2).map { _ in try server.owner() }
            for client in clients {
                let commands = (0..<150).map { ["POST", "room-\($0 % 3)", "message \($0)"] }
                let replies = try await offThePool { try client.pipeline(commands) }
                #expect(replies.allSatisfy { if case .integer = $0 { true } else { false } })
            }
            let dataDirectory = server.registry.configuration.dataDirectory
            directory.withLock { $0 = dataDirectory + "/tenant_" + server.tenant.metadata.tenantID + "/wal" }
            // Before shutdown, under every policy: acknowledged means written.
            let records = try FaultTests.readAll(directory.withLock { $0 })
            #expect(records.count >= 300 + 1, "every acknowledged POST's record is in the log (got \(records.count))")
        }
    }

    /// A client that pipelines and then closes its sending side gets every reply before the
    /// server closes: POSTs still waiting for their log (always: an fdatasync away), requests
    /// held behind them, and runs sent to the tenant's loop.
    @Test(arguments: [FsyncPolicy.always, .everysec])
    func aHalfCloseAfterAPipelineStillGetsEveryReply(fsync: FsyncPolicy) async throws {
        try await Self.withServer(fsync: fsync, threads: 2, moveConnections: false) { server in
            let clients = try (0..<4).map { _ in try server.owner() }
            // A disk whose fdatasync takes 20 ms, as a real one may: the POSTs still wait when
            // the end of input arrives.
            server.disk.delaySyncs(byMicroseconds: 20_000)
            for (index, client) in clients.enumerated() {
                let room = "half-\(index)"
                var commands: [[String]] = []
                for round in 0..<3 {
                    commands += (0..<100).map { ["POST", room, "r\(round) m\($0)"] }
                    commands.append(["HISTORY", room, "LIMIT", "1"])
                }
                // The last request a POST: it waits for its log after every hold is over.
                commands.append(["POST", room, "last"])
                let bytes = commands.flatMap { RESPTestClient.encode($0) }
                let replies = try await offThePool { () -> [RESPReply] in
                    try client.send(raw: bytes)
                    client.closeWrite()
                    var replies: [RESPReply] = []
                    while let reply = try? client.read() { replies.append(reply) }
                    return replies
                }
                #expect(replies.count == commands.count, "every request answered before the close")
                #expect(replies.dropLast().last?.elements?.first?.elements?.first == .integer(300))
                #expect(replies.last == .integer(301))
            }
        }
    }

    /// A tenant's snapshot copies its files off the event loop it shares with other tenants: a
    /// neighbour on the same loop is answered while the copy's syncs take their time.
    @Test func aSnapshotDoesNotHoldTheEventLoopItsTenantShares() async throws {
        try await Self.withServer(threads: 1) { server in
            let neighbour = try await server.registry.createTenant(
                name: "N",
                subdomain: "neighbour",
                plan: nil,
                owner: "nina"
            )
            let owner = try server.owner()
            _ = try owner.pipeline((0..<50).map { ["POST", "general", "m\($0)"] })
            let other = try RESPTestClient(port: server.port)
            #expect(try other.call("AUTH", "nina@neighbour", neighbour.ownerToken) == .simple("OK"))
            #expect(try other.call("PING") == .simple("PONG"))
            try await TemporaryDirectory.with { snapshots in
                let admin = try RESPTestClient(port: server.port)
                #expect(try admin.call("AUTH", "admin", "operator-token-0123456789abcdef-0123") == .simple("OK"))
                // Each file sync takes 600 ms: the snapshot's checkpoint syncs one, its copy at least
                // one more (on the loop, the copy would hold the neighbour for as long).
                server.disk.delaySyncs(byMicroseconds: 600_000)
                let done = Mutex(false)
                let id = server.tenant.metadata.tenantID
                async let snapshot: (RESPReply, Double) = offThePool {
                    let start = DispatchTime.now().uptimeNanoseconds
                    defer { done.withLock { $0 = true } }
                    let reply = try admin.call("TENANT", "SNAPSHOT", id, snapshots.path)
                    return (reply, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                }
                let slowest = try await offThePool {
                    var slowest = 0.0
                    while !done.withLock({ $0 }) {
                        let start = DispatchTime.now().uptimeNanoseconds
                        guard try other.call("PING") == .simple("PONG") else { return Double.infinity }
                        slowest = max(slowest, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                        usleep(10_000)
                    }
                    return slowest
                }
                let (reply, took) = try await snapshot
                server.disk.delaySyncs(byMicroseconds: 0)
                #expect(reply.errorCode == nil, "\(reply)")
                #expect(took >= 1.2, "the syncs took their time (\(took) s)")
                #expect(slowest < 0.3, "the neighbour waited \(slowest) s for a PING while the copy ran")
                #expect(try owner.call("HISTORY", "general", "LIMIT", "1").elements?.count == 1)
                // Two snapshots to one place at once: one copy, and the other's failure leaves it.
                let again = snapshots.path + "/again"
                try FileManager.default.createDirectory(atPath: again, withIntermediateDirectories: false)
                server.disk.delaySyncs(byMicroseconds: 200_000)
                let second = try RESPTestClient(port: server.port)
                #expect(try second.call("AUTH", "admin", "operator-token-0123456789abcdef-0123") == .simple("OK"))
                async let first = offThePool { try admin.call("TENANT", "SNAPSHOT", id, again) }
                async let other = offThePool { try second.call("TENANT", "SNAPSHOT", id, again) }
                let replies = try await [first, other]
                server.disk.delaySyncs(byMicroseconds: 0)
                let succeeded = replies.filter { $0.errorCode == nil }
                #expect(succeeded.count == 1, "\(replies)")
                #expect(replies.contains { $0.errorCode == "EXISTS" }, "\(replies)")
                let copied = try #require(succeeded.first?.fields?["path"]?.string)
                let files = try FileManager.default.subpathsOfDirectory(atPath: copied)
                #expect(files.contains { $0.hasSuffix(".ckpt") }, "the copy that succeeded is whole: \(files)")
            }
        }
    }
}
