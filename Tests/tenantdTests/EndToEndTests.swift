import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Runs the real `tenantd` binary on port 0 with its own data directory.
@Suite("End to end", .serialized)
struct EndToEndTests {
    struct CreatedTenant {
        var id: String
        var owner: String
        var token: String
    }

    static func createTenant(
        _ server: TenantdProcess,
        name: String,
        subdomain: String,
        plan: String = "free"
    ) throws -> CreatedTenant {
        let created = try server.operatorClient().createTenant(name: name, subdomain: subdomain, plan: plan)
        return CreatedTenant(id: created.id, owner: "alice", token: created.token)
    }

    static func login(_ server: TenantdProcess, _ user: String, _ token: String) throws -> RESPTestClient {
        try server.login(user, token)
    }

    /// Every message of a room, by paging with AFTER.
    static func allMessages(_ client: RESPTestClient, room: String) throws -> [(seq: Int64, text: String)] {
        var messages: [(Int64, String)] = []
        var after: Int64 = 0
        while true {
            let page = try #require(try client.call("HISTORY", room, "AFTER", String(after), "LIMIT", "1000").elements)
            if page.isEmpty { return messages }
            for entry in page {
                let fields = try #require(entry.elements)
                messages.append((try #require(fields[0].int), try #require(fields[3].string)))
            }
            after = messages.last!.0
        }
    }

    @Test func readyLineAdminTokenAndConnectCommands() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        var info = stat()
        #expect(stat(dir.path + "/data/admin.token", &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(try server.adminToken().count == 64)
        let client = try server.client()
        #expect(try client.call("PING") == .simple("PONG"))
        #expect(try client.call("ping", "hi") == .bulk(Array("hi".utf8)))
        // What stock clients send on connect gets a harmless reply.
        #expect(try client.call("CLIENT", "SETINFO", "LIB-NAME", "redis-py").errorCode == nil)
        #expect(
            try client.call("CLIENT", "MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "none").errorCode == "ERR"
        )
        #expect(try client.call("CONFIG", "GET", "save") == .array([.bulk(Array("save".utf8)), .bulk([])]))
        #expect(try client.call("CONFIG", "GET", "nothing-like-this") == .array([]))
        #expect(try client.call("SELECT", "0") == .simple("OK"))
        #expect(try client.call("COMMAND", "DOCS").elements != nil)
        #expect(try client.call("NOSUCH", "x").errorCode == "ERR")
        // Commands that need a login say so.
        #expect(try client.call("POST", "general", "hi").errorCode == "NOAUTH")
        #expect(try client.call("WHOAMI").errorCode == "NOAUTH")
        // HELLO 3 AUTH, as redis-py 8 opens, switches to RESP3 and authenticates.
        let hello = try client.call("HELLO", "3", "AUTH", "admin", server.adminToken())
        guard case .map = hello else {
            Issue.record("HELLO 3 replied \(hello)")
            return
        }
        #expect(hello.fields?["proto"] == .integer(3))
        #expect(hello.fields?["server"]?.string == "tenantd")
        #expect(
            try client.call("WHOAMI") == .array([.null, .bulk(Array("admin".utf8)), .bulk(Array("operator".utf8))])
        )
        #expect(try client.call("POST", "general", "hi").errorCode == "NOTENANT")
        #expect(try client.call("HELLO", "4").errorCode == "ERR")
        #expect(server.stop() == 0)
    }

    @Test func cleanRestartKeepsEverything() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data)
        let acme = try Self.createTenant(server, name: "Acme", subdomain: "acme")
        let alice = try Self.login(server, "alice@acme", acme.token)
        let bobToken = try #require(try alice.call("USER", "ADD", "bob", "admin").string)
        let bob = try Self.login(server, "bob@acme.chat.example.com", bobToken)
        for index in 1...30 {
            #expect(try alice.call("POST", "general", "héllo \(index) ✓") == .integer(Int64(index)))
        }
        #expect(try bob.call("POST", "random", "bob was here") == .integer(1))
        let rooms = try alice.call("ROOMS")
        let users = try alice.call("USER", "LIST")
        let admin = try server.client()
        try admin.call("AUTH", "admin", server.adminToken())
        let tenantGet = try admin.call("TENANT", "GET", acme.id)
        #expect(server.stop(signal: SIGTERM) == 0)

        server = try TenantdProcess(dataDirectory: data)
        let alice2 = try Self.login(server, "alice@\(acme.id)", acme.token)
        #expect(try alice2.call("ROOMS") == rooms)
        #expect(try alice2.call("USER", "LIST") == users)
        let messages = try Self.allMessages(alice2, room: "general")
        #expect(messages.map(\.seq) == Array(1...30))
        #expect(messages.map(\.text) == (1...30).map { "héllo \($0) ✓" })
        _ = try Self.login(server, "bob@acme", bobToken)
        let admin2 = try server.client()
        try admin2.call("AUTH", server.adminToken())
        #expect(try admin2.call("TENANT", "GET", acme.id) == tenantGet)
        #expect(try alice2.call("POST", "general", "after restart") == .integer(31))
        #expect(server.stop(signal: SIGINT) == 0)
    }

    @Test func killNineAfterPipelinedPostsLosesNothingAcknowledged() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data, arguments: ["--fsync", "always"])
        let acme = try Self.createTenant(server, name: "Acme", subdomain: "acme", plan: "enterprise")
        let writer = try Self.login(server, "alice@acme", acme.token)
        let replies = try writer.pipeline((1...2000).map { ["POST", "general", "message \($0)"] })
        #expect(replies == (1...2000).map { RESPReply.integer(Int64($0)) })

        // A second burst, killed while replies are still coming.
        let second = try Self.login(server, "alice@acme", acme.token)
        try second.send(raw: (1...2000).flatMap { RESPTestClient.encode(["POST", "burst", "burst \($0)"]) })
        var acknowledged: [Int64] = []
        for _ in 0..<500 { acknowledged.append(try #require(try second.read().int)) }
        server.stop(signal: SIGKILL)
        #expect(acknowledged == Array(1...500))

        server = try TenantdProcess(dataDirectory: data, arguments: ["--fsync", "always"])
        let reader = try Self.login(server, "alice@acme", acme.token)
        let general = try Self.allMessages(reader, room: "general")
        #expect(general.map(\.seq) == Array(1...2000))
        #expect(general.map(\.text) == (1...2000).map { "message \($0)" })
        let burst = try Self.allMessages(reader, room: "burst")
        #expect(burst.count >= 500)
        #expect(burst.map(\.seq) == Array(1...Int64(burst.count)))
        #expect(burst.map(\.text) == (1...burst.count).map { "burst \($0)" })
        #expect(server.stop() == 0)
    }

    @Test func aUserOfOneTenantCannotReachAnother() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        let tenantA = try Self.createTenant(server, name: "A", subdomain: "tenant-a")
        let tenantB = try Self.createTenant(server, name: "B", subdomain: "tenant-b")
        let ownerB = try Self.login(server, "alice@tenant-b", tenantB.token)
        #expect(try ownerB.call("POST", "secret", "b's secret") == .integer(1))
        let bUsers = try ownerB.call("USER", "LIST")
        let bRooms = try ownerB.call("ROOMS")

        // A's credential aimed at B's name, id and host, alone and through HELLO (a connection
        // each: failed AUTHs on one connection are slowed down and then cut off).
        for reference in ["tenant-b", tenantB.id, "tenant-b.chat.example.com", "tenant-b.", "/tenant/\(tenantB.id)"] {
            #expect(try server.client().call("AUTH", "alice@\(reference)", tenantA.token).errorCode == "WRONGPASS")
        }
        let probe = try server.client()
        #expect(try probe.call("HELLO", "3", "AUTH", "alice@tenant-b", tenantA.token).errorCode == "WRONGPASS")
        #expect(try probe.call("AUTH", "alice@tenant-a", "not-the-token").errorCode == "WRONGPASS")
        #expect(try probe.call("POST", "secret", "x").errorCode == "NOAUTH")
        for (user, token) in [("nobody@tenant-a", tenantA.token), ("alice@no-such-tenant", tenantA.token)] {
            #expect(try server.client().call("AUTH", user, token).errorCode == "WRONGPASS")
        }
        #expect(try server.client().call("AUTH", "admin", tenantA.token).errorCode == "WRONGPASS")

        // Authenticated to A, aimed at B by path, USE, TENANT and user names.
        let attacker = try Self.login(server, "alice@tenant-a", tenantA.token)
        let pathB = "/tenant/\(tenantB.id)/secret"
        #expect(try attacker.call("POST", pathB, "pwned").errorCode == "NOPERM")
        #expect(try attacker.call("HISTORY", pathB).errorCode == "NOPERM")
        #expect(try attacker.call("HISTORY", "/tenant/\(tenantB.id)/../secret").errorCode == "NOPERM")
        #expect(try attacker.call("USE", tenantB.id).errorCode == "NOPERM")
        #expect(try attacker.call("USE", "tenant-b").errorCode == "NOPERM")
        #expect(try attacker.call("TENANT", "GET", tenantB.id).errorCode == "NOPERM")
        #expect(try attacker.call("TENANT", "LIST").errorCode == "NOPERM")
        #expect(try attacker.call("TENANT", "CREATE", "x", "xyz-tenant").errorCode == "NOPERM")
        #expect(try attacker.call("USER", "TOKEN", "alice@tenant-b").errorCode == "NOTFOUND")
        #expect(try attacker.call("USER", "DEL", "alice@tenant-b").errorCode == "NOTFOUND")
        #expect(try attacker.call("USER", "ADD", "alice@tenant-b", "owner").errorCode == "INVALID")
        // A's own world is all it sees.
        #expect(try attacker.call("HISTORY", "secret") == .array([]))
        #expect(try attacker.call("ROOMS") == .array([]))
        #expect(try attacker.call("POST", "/tenant/\(tenantA.id)/mine", "ok") == .integer(1))
        #expect(try attacker.call("HISTORY", "/tenant/\(tenantA.id)/mine").elements?.count == 1)
        let whoami = try attacker.call("WHOAMI")
        #expect(whoami.elements?.first?.string == tenantA.id)

        // B is untouched.
        #expect(try ownerB.call("USER", "LIST") == bUsers)
        #expect(try ownerB.call("ROOMS") == bRooms)
        let secret = try Self.allMessages(ownerB, room: "secret")
        #expect(secret.map(\.text) == ["b's secret"])
        #expect(server.stop() == 0)
    }

    @Test func aClientThatPipelinesWithoutReadingStallsNobodyElse() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        let acme = try Self.createTenant(server, name: "Acme", subdomain: "acme")
        let greedy = try Self.login(server, "alice@acme", acme.token)
        let count = 50_000
        let requests = (0..<count).flatMap { RESPTestClient.encode(["ECHO", "e\($0)"]) }
        // The sender blocks once the server stops reading (its reply window is full and the
        // greedy client reads nothing); the server must go on serving everyone else.
        let sent = DispatchSemaphore(value: 0)
        let sender = Thread {
            try? greedy.send(raw: requests)
            sent.signal()
        }
        sender.start()
        let other = try Self.login(server, "alice@acme", acme.token)
        for index in 1...20 { #expect(try other.call("POST", "general", "m\(index)") == .integer(Int64(index))) }
        #expect(try other.call("HISTORY", "general", "LIMIT", "1").elements?.count == 1)
        for index in 0..<count {
            let reply = try greedy.read()
            if reply != .bulk(Array("e\(index)".utf8)) {
                Issue.record("reply \(index) is \(reply)")
                break
            }
        }
        sent.wait()
        #expect(server.stop() == 0)
    }

    @Test func badInputGetsClearErrorsAndTheServerGoesOn() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        let acme = try Self.createTenant(server, name: "Acme", subdomain: "acme")
        let bystander = try Self.login(server, "alice@acme", acme.token)

        let client = try Self.login(server, "alice@acme", acme.token)
        // Invalid UTF-8 in a message.
        try client.send(raw: RESPTestClient.encode([Array("POST".utf8), Array("r".utf8), [0xC3, 0x28]]))
        #expect(try client.read().errorCode == "INVALID")
        // A message over the limit, and a request argument over the request limit: the connection stays usable.
        #expect(try client.call("POST", "r", String(repeating: "x", count: 65537)).errorCode == "TOOBIG")
        #expect(try client.call("POST", "r", String(repeating: "x", count: 2 << 20)).errorCode == "TOOBIG")
        #expect(try client.call("POST", "bad room", "x").errorCode == "INVALID")
        #expect(try client.call("POST", "..", "x").errorCode == "INVALID")
        #expect(try client.call("POST", "r").errorCode == "ERR")
        #expect(try client.call("HISTORY", "r", "AFTER", "x").errorCode == "ERR")
        #expect(try client.call("HISTORY", "r", "AFTER", "1", "BEFORE", "3").errorCode == "ERR")
        #expect(try client.call("HISTORY", "r", "LIMIT", "1", "LIMIT", "3").errorCode == "ERR")
        #expect(try client.call("HISTORY", "r", "LIMIT", "-1").errorCode == "ERR")
        #expect(try client.call("HISTORY", "r", "LIMIT").errorCode == "ERR")
        #expect(try client.call("USER", "ROLE", "alice", "superuser").errorCode == "INVALID")
        #expect(try client.call("USER", "DEL", "nobody").errorCode == "NOTFOUND")
        // Inline commands with quotes, as typed into nc.
        try client.send(raw: Array("POST r \"two words\\x21\"\r\n".utf8))
        #expect(try client.read() == .integer(1))
        #expect(try client.call("HISTORY", "r").elements?.first?.elements?[3].string == "two words!")

        // Broken framing: PROTO, then the server closes that connection only.
        let broken = try server.client()
        try broken.send(raw: Array("*1\r\n$abc\r\n".utf8))
        #expect(try broken.read().errorCode == "PROTO")
        #expect(broken.isClosedByServer())
        let quoted = try server.client()
        try quoted.send(raw: Array("PING \"unbalanced\r\n".utf8))
        #expect(try quoted.read().errorCode == "PROTO")
        #expect(quoted.isClosedByServer())
        // A line that never ends is cut off at the inline limit.
        let flood = try server.client()
        try? flood.send(raw: [UInt8](repeating: UInt8(ascii: "a"), count: (1 << 20) + 10))
        #expect(try flood.read().errorCode == "PROTO")

        #expect(try bystander.call("POST", "r", "still here") == .integer(2))
        #expect(try client.call("QUIT") == .simple("OK"))
        #expect(client.isClosedByServer())
        #expect(server.stop() == 0)
    }
}
