import Foundation
import NIOCore
import NIOPosix
import RESP
import Synchronization
import TenantEngine
import TestSupport
import Testing

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// A plain connection moves to its tenant's event loop once it has a tenant (``ConnectionSocket``):
/// it lands there, keeps its id, name and protocol, and what it sent meanwhile runs after the move,
/// each request once, in order.
@Suite("Connections move to their tenant's loop", .serialized)
struct ConnectionMoveTests {
    static var moves: UInt64 { ServerStats.shared.connectionMoves.load(ordering: .relaxed) }

    /// The loop the tenant with `id` is placed on.
    static func home(_ server: SyncLaneTests.Server, id: String) async throws -> any EventLoop {
        let tenant = try await server.registry.tenant(id: id)
        return try #require(tenant.placement as? any EventLoop)
    }

    @Test func authenticatedConnectionsLandOnTheirTenantsLoop() async throws {
        try await SyncLaneTests.withServer(threads: 2) { server in
            let before = Self.moves
            // Accepted on both loops in turn: about half of them start on the wrong one.
            let clients = try (0..<8).map { _ in try server.owner() }
            let home = try await Self.home(server, id: server.tenant.metadata.tenantID)
            try await waitUntilAsync("every connection on its tenant's loop") {
                let channels = server.server.openChannels
                return channels.count == clients.count && channels.allSatisfy { $0.eventLoop === home }
            }
            #expect(Self.moves - before >= 1, "some connections moved")
            // Each one works there, in its own session, its POSTs in one sequence.
            var seqs: [Int64] = []
            for (index, client) in clients.enumerated() {
                #expect(try client.call("CLIENT", "SETNAME", "mover-\(index)") == .simple("OK"))
                let replies = try await offThePool {
                    try client.pipeline([["POST", "general", "from \(index)"], ["CLIENT", "GETNAME"], ["WHOAMI"]])
                }
                guard case .integer(let seq) = replies[0] else {
                    Issue.record("POST: \(replies[0])")
                    continue
                }
                seqs.append(seq)
                #expect(replies[1] == .bulk(Array("mover-\(index)".utf8)))
            }
            #expect(seqs == Array(1...Int64(clients.count)))
        }
    }

    /// redis-py's opening (HELLO 3 with AUTH and SETNAME): the connection moves and still speaks
    /// RESP3 under the same id and name.
    @Test func aMovedConnectionKeepsItsIdNameAndProtocol() async throws {
        try await SyncLaneTests.withServer(threads: 2) { server in
            let home = try await Self.home(server, id: server.tenant.metadata.tenantID)
            for attempt in 0..<4 {
                let client = try RESPTestClient(port: server.port)
                guard case .integer(let id) = try client.call("CLIENT", "ID") else {
                    Issue.record("CLIENT ID before AUTH")
                    return
                }
                let hello = try client.call(
                    "HELLO",
                    "3",
                    "AUTH",
                    "alice@acme",
                    server.tenant.ownerToken,
                    "SETNAME",
                    "py-\(attempt)"
                )
                guard case .map = hello else {
                    Issue.record("HELLO 3: \(hello)")
                    return
                }
                try await waitUntilAsync("the connection on its tenant's loop") {
                    server.server.openChannels.contains { $0.eventLoop === home }
                        && server.server.openChannels.allSatisfy { $0.eventLoop === home }
                }
                #expect(try client.call("CLIENT", "ID") == .integer(id), "the same id after the move")
                #expect(try client.call("CLIENT", "GETNAME") == .bulk(Array("py-\(attempt)".utf8)))
                let again = try client.call("HELLO")
                guard case .map(let fields) = again else {
                    Issue.record("HELLO after the move: \(again)")
                    return
                }
                let proto = stride(from: 0, to: fields.count - 1, by: 2).first {
                    fields[$0] == .bulk(Array("proto".utf8))
                }
                #expect(proto.map { fields[$0 + 1] } == .integer(3), "still RESP3")
                client.shutdown()
                try await waitUntilAsync("the connection closed") { server.server.openChannels.isEmpty }
            }
        }
    }

    /// A client that does not wait for AUTH's reply: its requests arrive while AUTH runs and the
    /// connection moves, in pieces of every size. Each runs once, in order, on the tenant's loop.
    @Test func requestsSentBehindAuthRunAfterTheMoveInOrder() async throws {
        try await SyncLaneTests.withServer(threads: 2) { server in
            let token = server.tenant.ownerToken
            let home = try await Self.home(server, id: server.tenant.metadata.tenantID)
            let clients = try await withThrowingTaskGroup(of: RESPTestClient.self) { group in
                for index in 0..<6 {
                    group.addTask {
                        let room = "behind-\(index)"
                        var commands: [[String]] = [["AUTH", "alice@acme", token]]
                        for n in 0..<300 {
                            commands.append(["POST", room, "m\(n)"])
                            if n % 50 == 49 { commands.append(["HISTORY", room, "LIMIT", "1"]) }
                        }
                        commands.append(["PING"])
                        let count = commands.count
                        let bytes = commands.flatMap { RESPTestClient.encode($0) }
                        let client = try RESPTestClient(port: server.port)
                        let replies = try await offThePool { () -> [RESPReply] in
                            var offset = 0
                            var piece = 3 + index
                            while offset < bytes.count {
                                let end = min(bytes.count, offset + piece)
                                try client.send(raw: Array(bytes[offset..<end]))
                                offset = end
                                piece = piece * 5 % 997 + 1
                                if piece % 3 == 0 { usleep(100) }
                            }
                            return try (0..<count).map { _ in try client.read() }
                        }
                        #expect(replies.first == .simple("OK"))
                        #expect(replies.last == .simple("PONG"))
                        var seq: Int64 = 0
                        for (command, reply) in zip(commands, replies).dropFirst().dropLast() {
                            if command[0] == "POST" {
                                seq += 1
                                #expect(reply == .integer(seq), "\(room): POST \(seq) once, in its place")
                            } else {
                                let newest = reply.elements?.first?.elements?.first
                                #expect(newest == .integer(seq), "\(room): HISTORY sees the POSTs before it")
                            }
                        }
                        return client
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            // A connection whose AUTH was answered while a request behind it was half read does
            // not move then, and has no later moment to (a known limit, docs/architecture.md):
            // it stays where it was accepted and its requests hop, as checked above. So: every
            // connection is still open, and those accepted elsewhere moved, but for such ones.
            try await waitUntilAsync("every connection open, most on their tenant's loop") {
                let channels = server.server.openChannels
                return channels.count == clients.count
                    && channels.filter({ $0.eventLoop === home }).count >= clients.count - 1
            }
        }
    }

    /// A client that switches between two tenants on two loops moves with each switch, up to
    /// ``ConnectionSocket/maxMoves``, and then stays; every command answers in its tenant.
    @Test func aConnectionSwitchingTenantsMovesABoundedNumberOfTimes() async throws {
        try await SyncLaneTests.withServer(threads: 2) { server in
            let other = try await server.registry.createTenant(name: "B", subdomain: "beta", plan: nil, owner: "bob")
            let homes = [
                try await Self.home(server, id: server.tenant.metadata.tenantID),
                try await Self.home(server, id: other.metadata.tenantID),
            ]
            #expect(homes[0] !== homes[1], "the two tenants are on different loops")
            let logins = [("alice@acme", server.tenant.ownerToken), ("bob@beta", other.ownerToken)]
            let before = Self.moves
            let client = try RESPTestClient(port: server.port)
            let switches = FixedLimits.maxConnectionMoves + 4
            var settled: (any EventLoop)?
            for turn in 0..<switches {
                let (user, token) = logins[turn % 2]
                #expect(try client.call("AUTH", user, token) == .simple("OK"))
                #expect(try client.call("POST", "general", "turn \(turn)") == .integer(Int64(turn / 2 + 1)))
                #expect(try client.call("WHOAMI").description.contains(user.split(separator: "@")[0]))
                // The move, if any, happened right after AUTH's reply: the POST and WHOAMI were
                // answered on the channel it has now.
                let loop = server.server.openChannels.first?.eventLoop
                if turn < FixedLimits.maxConnectionMoves {
                    #expect(loop === homes[turn % 2], "turn \(turn): on \(user)'s loop")
                } else if let settled {
                    #expect(loop === settled, "turn \(turn): past the cap, it stays where it is")
                } else {
                    settled = loop
                }
            }
            #expect(Self.moves - before >= UInt64(FixedLimits.maxConnectionMoves - 1))
            #expect(server.server.openChannels.count == 1)
        }
    }

    /// The tenants one connection creates (an operator provisioning them): with moves, they are
    /// spread over the loops, fewest first, so that their own connections, which move to them,
    /// load every core; with moves off, they stay on the creating connection's loop, where its
    /// own requests for them run without a hop.
    @Test(arguments: [true, false])
    func tenantsOneConnectionCreatesArePlacedByTheRule(moves: Bool) async throws {
        try await SyncLaneTests.withServer(threads: 2, moveConnections: moves) { server in
            let admin = try RESPTestClient(port: server.port)
            #expect(try admin.call("AUTH", "admin", "operator-token-0123456789abcdef-0123") == .simple("OK"))
            var ids: [String] = []
            for index in 0..<6 {
                let reply = try admin.call("TENANT", "CREATE", "P\(index)", "place\(index)", "OWNER", "owner")
                ids.append(try #require(reply.fields?["tenant_id"]?.string, "TENANT CREATE: \(reply)"))
            }
            let adminLoop = try #require(server.server.openChannels.first?.eventLoop)
            var counts: [ObjectIdentifier: Int] = [:]
            for id in ids { counts[ObjectIdentifier(try await Self.home(server, id: id)), default: 0] += 1 }
            if moves {
                // Seven tenants on two loops, the first one included: 3 and 4, whichever first.
                #expect(counts.count == 2, "on both loops: \(counts.values)")
                #expect(counts.values.allSatisfy { $0 >= 2 }, "balanced: \(counts.values)")
            } else {
                #expect(counts == [ObjectIdentifier(adminLoop): ids.count], "all on the creator's loop")
            }
        }
    }

    /// `--move-connections no`: connections stay on the loop that accepted them and send their
    /// requests to their tenant's loop instead.
    @Test func withMovesOffConnectionsStayWhereTheyWereAccepted() async throws {
        try await SyncLaneTests.withServer(threads: 2, moveConnections: false) { server in
            let clients = try (0..<6).map { _ in try server.owner() }
            let home = try await Self.home(server, id: server.tenant.metadata.tenantID)
            for client in clients { #expect(try client.call("POST", "general", "x").description.isEmpty == false) }
            let loops = Set(server.server.openChannels.map { ObjectIdentifier($0.eventLoop) })
            #expect(loops.count == 2, "accepted on both loops, and still there")
            #expect(server.server.openChannels.contains { $0.eventLoop !== home })
        }
    }

    /// A connection keeps its place under `maxclients` while it moves: clients that connect while
    /// others move between loops are refused all the same once the server is full.
    @Test func aMovingConnectionKeepsItsPlaceUnderMaxclients() async throws {
        try await SyncLaneTests.withServer(threads: 2, maxClients: 4) { server in
            let other = try await server.registry.createTenant(name: "B", subdomain: "beta", plan: nil, owner: "bob")
            let logins = [("alice@acme", server.tenant.ownerToken), ("bob@beta", other.ownerToken)]
            let movers = try (0..<4).map { _ in try RESPTestClient(port: server.port) }
            // Each one admitted before the prober starts: the server is full.
            for mover in movers { #expect(try mover.call("PING") == .simple("PONG")) }
            let admitted = Mutex(0)
            let refused = Mutex(0)
            let stop = Atomic<Bool>(false)
            let finished = Atomic<Bool>(false)
            let prober = Thread {
                defer { finished.store(true, ordering: .relaxed) }
                while !stop.load(ordering: .relaxed) {
                    guard let client = try? RESPTestClient(port: server.port, timeout: 5) else { continue }
                    switch try? client.call("PING") {
                    case .simple("PONG"): admitted.withLock { $0 += 1 }
                    case .error(let message) where message.contains("max number of clients"):
                        refused.withLock { $0 += 1 }
                    default: break
                    }
                    client.shutdown()
                }
            }
            prober.start()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, mover) in movers.enumerated() {
                    group.addTask {
                        try await offThePool {
                            for turn in 0..<FixedLimits.maxConnectionMoves {
                                let (user, token) = logins[(turn + index) % 2]
                                let authenticated = try mover.call("AUTH", user, token)
                                let pong = try mover.call("PING")
                                #expect(authenticated == .simple("OK"))
                                #expect(pong == .simple("PONG"))
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            stop.store(true, ordering: .relaxed)
            try await waitUntilAsync("the prober to stop") { finished.load(ordering: .relaxed) }
            #expect(admitted.withLock { $0 } == 0, "no client admitted past maxclients while others moved")
            #expect(refused.withLock { $0 } > 0)
        }
    }
}
