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

/// The lane across event loops: a connection whose tenant is on another loop runs its hot
/// commands there, a batch at a time, in request order.
extension SyncLaneTests {
    @Test func connectionsOnAnotherLoopThanTheirTenantRunTheirBatchesThere() async throws {
        try await Self.withServer(threads: 2, moveConnections: false) { server in
            // Enough connections that both loops have some: those on the tenant's loop run on
            // the lane, the others send each read's POSTs to the tenant's loop in one hop
            // (RemoteRun), one log for all.
            let clients = try (0..<6).map { _ in try server.owner() }
            let before = Self.laneCommands
            let seqs = try await withThrowingTaskGroup(of: [RESPReply].self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask {
                        try await offThePool {
                            try client.pipeline((0..<50).map { ["POST", "shared", "c\(index) m\($0)"] })
                        }
                    }
                }
                var all: [Int64] = []
                for try await replies in group {
                    let values = replies.compactMap { if case .integer(let value) = $0 { value } else { nil } }
                    #expect(values.count == 50)
                    #expect(values == values.sorted(), "one connection's POSTs keep their order")
                    all += values
                }
                return all
            }
            #expect(Set(seqs).count == 300 && seqs.min() == 1 && seqs.max() == 300)
            #expect(Self.laneCommands - before >= 300, "every POST ran on its tenant's loop")
            // A remote run keeps a connection's order with the commands that follow it: on every
            // connection (half of them are on the other loop), a HISTORY sees the POSTs before it.
            for (index, client) in clients.enumerated() {
                let room = "mixed-\(index)"
                let mixed = try await offThePool {
                    try client.pipeline(
                        (0..<80).map { ["POST", room, "m\($0)"] } + [
                            ["HISTORY", room, "LIMIT", "1000"], ["USAGE"], ["POST", room, "last"], ["PING"],
                            ["HISTORY", room, "LIMIT", "1"],
                        ]
                    )
                }
                #expect(mixed[0..<80] == ArraySlice((1...80).map { RESPReply.integer(Int64($0)) }))
                #expect(mixed[80].elements?.count == 80, "HISTORY sees the 80 POSTs before it")
                #expect(mixed[82] == .integer(81))
                #expect(mixed[83] == .simple("PONG"))
                #expect(mixed[84].elements?.first?.elements?.first == .integer(81))
            }
        }
    }

    /// A connection whose tenant is on another loop keeps its socket armed while its remote run
    /// is away (up to ``RESPRequestHandler/readAheadBytes`` unparsed): requests that arrive
    /// meanwhile, in pieces of any size, some cut mid-request, and far more than the bound while
    /// the client is slow to read, run after the run's replies are back, each once, in order.
    @Test func requestsReadWhileARemoteRunIsAwayRunAfterItInOrder() async throws {
        try await Self.withServer(threads: 2, moveConnections: false) { server in
            let clients = try (0..<4).map { _ in try server.owner() }
            let filler = String(repeating: "x", count: 300)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask {
                        let room = "ahead-\(index)"
                        var commands: [[String]] = []
                        for n in 0..<1_200 {
                            commands.append(["POST", room, "m\(n) \(filler)"])
                            if n % 100 == 99 { commands.append(["HISTORY", room, "LIMIT", "1"]) }
                        }
                        // Over 400 KiB: past the read-ahead bound many times over.
                        let bytes = commands.flatMap { RESPTestClient.encode($0) }
                        let sent = Mutex<(any Error)?>(nil)
                        let sender = Thread {
                            var offset = 0
                            var piece = 1
                            while offset < bytes.count {
                                let end = min(bytes.count, offset + piece)
                                do { try client.send(raw: Array(bytes[offset..<end])) } catch {
                                    sent.withLock { $0 = error }
                                    return
                                }
                                offset = end
                                piece = piece * 7 % 9_001 + 1
                                if piece % 5 == 0 { usleep(200) }
                            }
                        }
                        sender.start()
                        let sending = commands
                        let replies = try await offThePool {
                            // A slow reader at first: the replies fill the socket, the lane waits
                            // for the client to read, and what it reads ahead reaches the bound.
                            usleep(300_000)
                            return try sending.map { _ in try client.read() }
                        }
                        #expect(sent.withLock { $0 } == nil)
                        var seq: Int64 = 0
                        for (command, reply) in zip(commands, replies) {
                            if command[0] == "POST" {
                                seq += 1
                                #expect(reply == .integer(seq), "\(room): POST \(seq) answered in its place")
                            } else {
                                let newest = reply.elements?.first?.elements?.first
                                #expect(newest == .integer(seq), "\(room): HISTORY sees the POSTs before it")
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    /// The operator's gateway traffic: path-form rooms (`/tenant/<id>/<room>`) naming tenants on
    /// both loops, pipelined on one connection without a tenant context. Each runs on its tenant's
    /// loop (here, or in one hop per batch), in request order; what the lane does not take (a
    /// tenant not open, a credential not valid there, a malformed path) gets the task's answer in
    /// its place.
    @Test func pathFormRoomsRunOnTheLaneInTheirTenantsLoopsInRequestOrder() async throws {
        try await Self.withServer(threads: 3) { server in
            var created = [server.tenant.metadata.tenantID]
            for index in 1..<6 {
                let tenant = try await server.registry.createTenant(
                    name: "T\(index)",
                    subdomain: "team\(index)",
                    plan: nil,
                    owner: "owner"
                )
                created.append(tenant.metadata.tenantID)
            }
            let ids = created
            // Open every tenant (the lane resolves open ones) and check they span the three loops:
            // the connection's, and two others, so that batches go to one loop after another.
            var loops = Set<ObjectIdentifier>()
            for id in ids {
                let tenant = try await server.registry.tenant(id: id)
                if let placement = tenant.placement { loops.insert(ObjectIdentifier(placement as AnyObject)) }
            }
            #expect(loops.count == 3, "the tenants are on every loop")
            let admin = try RESPTestClient(port: server.port)
            #expect(try admin.call("AUTH", "admin", "operator-token-0123456789abcdef-0123") == .simple("OK"))
            // A first request for the task, whose marker gives the connection its lane.
            #expect(try admin.call("PING") == .simple("PONG"))
            let before = Self.laneCommands
            let rounds = 20
            var pipeline: [[String]] = []
            // Tenant i starts with i messages, so that no two tenants answer a round with the
            // same seq: a reply swapped between tenants shows.
            for (offset, id) in ids.enumerated() {
                for _ in 0..<offset { pipeline.append(["POST", "/tenant/\(id)/general", "warm-up"]) }
            }
            let warmUps = pipeline.count
            for round in 0..<rounds {
                for id in ids { pipeline.append(["POST", "/tenant/\(id)/general", "r\(round)"]) }
                pipeline.append(["PING"])
            }
            for id in ids { pipeline.append(["HISTORY", "/tenant/\(id)/general", "LIMIT", "1"]) }
            let requests = pipeline
            let replies = try await offThePool { try admin.pipeline(requests) }
            #expect(replies.count == pipeline.count)
            var index = 0
            for (offset, id) in ids.enumerated() {
                for seq in stride(from: 1, through: offset, by: 1) {
                    #expect(replies[index] == .integer(Int64(seq)), "\(id) warm-up \(seq)")
                    index += 1
                }
            }
            #expect(index == warmUps)
            for round in 0..<rounds {
                for (offset, id) in ids.enumerated() {
                    #expect(
                        replies[index] == .integer(Int64(offset + round + 1)),
                        "\(id) round \(round): its own seq, in order"
                    )
                    index += 1
                }
                #expect(replies[index] == .simple("PONG"))
                index += 1
            }
            for (offset, id) in ids.enumerated() {
                let newest = replies[index].elements?.first?.elements
                #expect(newest?.first == .integer(Int64(offset + rounds)), "\(id): HISTORY sees every POST before it")
                #expect(newest?.last == .bulk(Array("r\(rounds - 1)".utf8)))
                index += 1
            }
            #expect(Self.laneCommands - before >= UInt64(pipeline.count), "every command ran on a lane")
            // What the lane leaves to the task, answered in its place in the pipeline.
            let mixed = try await offThePool {
                try admin.pipeline([
                    ["POST", "/tenant/\(ids[1])/general", "before"],
                    ["POST", "/tenant/no-such-tenant/general", "x"],
                    ["POST", "/tenant/\(ids[2])", "no room"],
                    ["POST", "/tenant/\(ids[3])/general", "after"],
                    ["POST", "general", "no context"],
                ])
            }
            #expect(mixed[0] == .integer(Int64(1 + rounds + 1)))
            #expect(mixed[1].errorCode == "NOTFOUND", "\(mixed[1])")
            #expect(mixed[2].errorCode == "INVALID", "\(mixed[2])")
            #expect(mixed[3] == .integer(Int64(3 + rounds + 1)))
            #expect(mixed[4].errorCode == "NOTENANT", "\(mixed[4])")
            // A user may name its own tenant in the path form (on the lane), never another.
            let user = try server.owner()
            let own = try await offThePool {
                try user.pipeline([
                    ["POST", "/tenant/\(ids[0])/general", "mine"],
                    ["POST", "/tenant/\(ids[1])/general", "theirs"],
                    ["HISTORY", "/tenant/\(ids[1])/general", "LIMIT", "1"],
                    ["POST", "general", "plain"],
                ])
            }
            #expect(own[0] == .integer(Int64(rounds + 1)))
            #expect(own[1].errorCode == "NOPERM", "\(own[1])")
            #expect(own[2].errorCode == "NOPERM", "\(own[2])")
            #expect(own[3] == .integer(Int64(rounds + 2)))
            let theirs = try await server.registry.tenant(id: ids[1])
            let newest = try await theirs.history(.operator, room: "general", after: nil, before: nil, limit: 1)
            #expect(newest.first?.text == "before", "the other tenant's room is untouched")
        }
    }

    /// A run with POSTs to several tenants hears from each tenant's log, and its POSTs may all be
    /// answered before the last report: its replies go back once, whatever reports come after.
    @Test func aRemoteRunDeliversItsRepliesOnce() async throws {
        try await Self.withServer(threads: 1) { server in
            let tenant = try await server.registry.tenant(id: server.tenant.metadata.tenantID)
            guard let loop = tenant.placement as? any EventLoop else {
                Issue.record("the tenant is placed on a loop")
                return
            }
            let dispatcher = CommandDispatcher(registry: server.registry, logger: .quiet, limits: ServerLimits())
            let lane = SyncLane(
                connectionID: 1,
                tenant: nil,
                tenantID: nil,
                principal: .operator,
                version: .resp2,
                pathForm: .plain,
                subscriber: ConnectionSubscriber(
                    queue: ReplyQueue(limit: 16, byteLimit: 1 << 16),
                    version: .resp2,
                    disconnect: {}
                )
            )
            let words = [ByteBuffer(string: "POST"), ByteBuffer(string: "general"), ByteBuffer(string: "hi")]
            let request = RemoteRun.Request(
                spec: CommandTable.post,
                words: words,
                wireBytes: 32,
                target: LaneTarget(tenant: tenant, pathRoom: nil)
            )
            let deliveries = Mutex<[String]>([])
            let run = RemoteRun([request], on: loop, lane: lane, dispatcher: dispatcher) { bytes, _ in
                deliveries.withLock { $0.append(String(buffer: bytes)) }
            }
            try await loop.submit { run.run() }.get()
            try await waitUntilAsync("the POST's reply") { deliveries.withLock { $0.count } == 1 }
            #expect(deliveries.withLock { $0 } == [":1\r\n"])
            // Late reports, as another tenant's log of the same run would give: nothing more.
            try await loop.submit { run.logWritten(tenant, upTo: .max, error: nil) }.get()
            try await loop.submit {
                run.logWritten(tenant, upTo: .max, error: TenantError(.storageFailed, "late"))
            }.get()
            #expect(deliveries.withLock { $0 } == [":1\r\n"], "delivered once")
        }
    }
}
