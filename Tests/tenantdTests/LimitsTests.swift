import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The contract's "Limits": what any client, authenticated or not, can make the server hold or do,
/// checked on the real server with its resident memory measured.
@Suite("Limits")
struct LimitsTests {
    static let mebibyte = 1 << 20

    static func server(_ dir: TemporaryDirectory, _ arguments: [String] = []) throws -> TenantdProcess {
        try TenantdProcess(dataDirectory: dir.path + "/data", arguments: arguments)
    }

    /// A tenant on the enterprise plan (no daily limit) and its owner's connection.
    static func tenant(
        _ server: TenantdProcess,
        _ subdomain: String = "acme"
    ) throws -> (
        id: String, token: String, owner: RESPTestClient
    ) {
        let created = try server.operatorClient().createTenant(
            name: subdomain,
            subdomain: subdomain,
            plan: "enterprise"
        )
        return (created.id, created.token, try server.login("alice@\(subdomain)", created.token))
    }

    /// Reads what the server sent until it closed the connection.
    /// - Returns: `closed`, or what happened instead (an error, or replies without end).
    static func readUntilClosed(_ client: RESPTestClient, atMost: Int = 10_000) -> String {
        for count in 0..<atMost {
            do {
                _ = try client.read()
            } catch RESPTestClientError.closed {
                return "closed"
            } catch {
                return "\(error) after \(count) replies"
            }
        }
        return "still open after \(atMost) replies"
    }

    @Test func anAnonymousClientCannotMakeTheServerReadMegabytes() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        // A million arguments announced, or one of 1 MiB: refused at the header, then closed.
        let many = try server.client()
        try many.send(raw: Array("*1000000\r\n".utf8))
        #expect(try many.read() == .error("PROTO Protocol error: unauthenticated multibulk length"))
        #expect(many.isClosedByServer())
        let big = try server.client()
        try big.send(raw: Array("*2\r\n$4\r\nECHO\r\n$1048576\r\n".utf8))
        #expect(try big.read() == .error("PROTO Protocol error: unauthenticated bulk length"))
        #expect(big.isClosedByServer())
        // Sixty connections each send half of a 1 MiB argument and stay: measured while they
        // are there, the server holds none of it (it closed them at the header).
        let baseline = server.residentBytes()
        var clients: [RESPTestClient] = []
        for _ in 0..<60 {
            let client = try server.client()
            try? client.send(
                raw: Array("*2\r\n$4\r\nECHO\r\n$1048576\r\n".utf8) + [UInt8](repeating: 120, count: 512 << 10)
            )
            clients.append(client)
        }
        #expect(try server.client().call("PING") == .simple("PONG"))
        let held = server.residentBytes() - baseline
        #expect(held < 16 * Self.mebibyte, "resident memory grew by \(held >> 20) MiB with 60 half-sent arguments")
        // Eleven words inline are over the rule as well; ten arguments of 16 KiB pass (and get NOAUTH).
        let inline = try server.client()
        try inline.send(raw: Array("POST a b c d e f g h i j\r\n".utf8))
        #expect(try inline.read().errorCode == "PROTO")
        let fits = try server.client()
        let word = String(repeating: "w", count: 16 << 10)
        #expect(try fits.call(["POST"] + Array(repeating: word, count: 9)).errorCode == "NOAUTH")
        _ = clients
        #expect(try server.client().call("PING") == .simple("PONG"))
        #expect(server.stop() == 0)
    }

    @Test func anAnonymousClientThatDoesNotReadHoldsLittle() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        let baseline = server.residentBytes()
        // Forty connections each send 400 ECHOs of 16 KiB (6.5 MB) and read nothing.
        let echo = RESPTestClient.encode(["ECHO", String(repeating: "e", count: 16 << 10)])
        var clients: [RESPTestClient] = []
        var senders: [Thread] = []
        for _ in 0..<40 {
            let client = try server.client()
            client.shrinkReceiveBuffer()
            let sender = Thread { try? client.send(raw: Array((0..<400).map { _ in echo }.joined())) }
            sender.start()
            clients.append(client)
            senders.append(sender)
        }
        // They stall once their small unauthenticated reply window is full; sampled meanwhile.
        var peak = 0
        for _ in 0..<30 {
            #expect(try server.client().call("PING") == .simple("PONG"))
            peak = max(peak, server.residentBytes())
            usleep(50_000)
        }
        let grown = peak - baseline
        #expect(grown < 40 * Self.mebibyte, "resident memory grew by \(grown >> 20) MiB for 40 anonymous connections")
        for client in clients { client.shutdown() }
        #expect(server.stop() == 0)
    }

    @Test func aPipelinedAuthWidensTheLimitsForTheRequestsAfterIt() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        let acme = try Self.tenant(server)
        let client = try server.client()
        let text = String(repeating: "é", count: 20_000)
        // AUTH and a 40 KB POST in one write, as redis-benchmark -a sends them.
        try client.send(
            raw: RESPTestClient.encode(["AUTH", "alice@acme", acme.token]) + RESPTestClient.encode(["POST", "r", text])
        )
        #expect(try client.read() == .simple("OK"))
        #expect(try client.read() == .integer(1))
        #expect(server.stop() == 0)
    }

    @Test func aLongInlineLineIsCutOffAt64KiB() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        let acme = try Self.tenant(server)
        // Authenticated too: an inline line is at most 64 KiB.
        try acme.owner.send(raw: Array("POST r ".utf8) + [UInt8](repeating: 97, count: 65 << 10))
        #expect(try acme.owner.read() == .error("PROTO Protocol error: too big inline request"))
        #expect(acme.owner.isClosedByServer())
        let under = try server.login("alice@acme", acme.token)
        try under.send(raw: Array("POST r ".utf8) + [UInt8](repeating: 97, count: 60 << 10) + [13, 10])
        #expect(try under.read() == .integer(1))
        #expect(server.stop() == 0)
    }

    @Test func bulkAndRequestLimitsAfterAuthentication() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(
            dir,
            ["--proto-max-bulk-len", "256kb", "--client-query-buffer-limit", "1mb"]
        )
        let acme = try Self.tenant(server)
        // One argument over proto-max-bulk-len: TOOBIG, and the connection goes on.
        let big = String(repeating: "x", count: 300 << 10)
        #expect(try acme.owner.call("ECHO", big).errorCode == "TOOBIG")
        #expect(try acme.owner.call("PING") == .simple("PONG"))
        // Each argument under it, all together over client-query-buffer-limit: PROTO and closed.
        let part = String(repeating: "y", count: 200 << 10)
        try acme.owner.send(raw: RESPTestClient.encode(["ECHO"] + Array(repeating: part, count: 6)))
        #expect(try acme.owner.read() == .error("PROTO Protocol error: request over client-query-buffer-limit"))
        #expect(acme.owner.isClosedByServer())
        #expect(try server.login("alice@acme", acme.token).call("PING") == .simple("PONG"))
        #expect(server.stop() == 0)
    }

    @Test func connectionsPastMaxclientsAreRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir, ["--maxclients", "4"])
        let held = try (0..<4).map { _ in try server.client() }
        for client in held { #expect(try client.call("PING") == .simple("PONG")) }
        let refused = try server.client()
        #expect(try refused.read() == .error("ERR max number of clients reached"))
        #expect(refused.isClosedByServer())
        held[0].shutdown()
        try waitUntil("a place among maxclients") {
            let next = try server.client()
            return (try? next.call("PING")) == .simple("PONG")
        }
        #expect(server.stop() == 0)
    }

    @Test func maxclientsIsLoweredToWhatTheOpenFilesLimitAllows() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // 1,100 descriptors in all, 1,024 kept for logs and listeners: 76 clients.
        let server = try TenantdProcess(dataDirectory: dir.path + "/data", openFilesLimit: 1100)
        #expect(server.stderrText().contains("maxclients has been reduced to 76"), "\(server.stderrText())")
        let held = try (0..<76).map { _ in try server.client() }
        for client in held { #expect(try client.call("PING") == .simple("PONG")) }
        let refused = try server.client()
        #expect(try refused.read() == .error("ERR max number of clients reached"))
        #expect(server.stop() == 0)
    }

    @Test func idleClientsAreClosedAfterTimeoutButSubscribersStay() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir, ["--timeout", "1"])
        let acme = try Self.tenant(server)
        let subscriber = try server.login("alice@acme", acme.token)
        try subscriber.send(raw: RESPTestClient.encode(["SUBSCRIBE", "general"]))
        #expect(try subscriber.read().elements?.first?.string == "subscribe")
        let idle = try server.client()
        #expect(try idle.call("PING") == .simple("PONG"))
        let started = Date()
        #expect(idle.isClosedByServer())
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.5 && waited < 10, "closed after \(waited) s")
        // The subscriber outlived the timeout and still gets its messages.
        #expect(try server.login("alice@acme", acme.token).call("POST", "general", "still there") == .integer(1))
        #expect(try subscriber.read().elements?.first?.string == "message")
        #expect(server.stop() == 0)
    }

    @Test func maxSubscriptionsAndOneSubscriptionPerRoomWhateverItsName() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir, ["--max-subscriptions", "3"])
        let acme = try Self.tenant(server)
        let client = try server.login("alice@acme", acme.token)
        try client.send(raw: RESPTestClient.encode(["HELLO", "3"]))
        _ = try client.read()
        #expect(try client.call("SUBSCRIBE", "a", "b", "c", "d").errorCode == "ERR")
        // Nothing was subscribed: three fit.
        try client.send(raw: RESPTestClient.encode(["SUBSCRIBE", "general", "/tenant/\(acme.id)/general", "b"]))
        let counts = try (0..<3).map { _ in try client.read().elements?[2].int }
        #expect(counts == [1, 1, 2], "one room under two names is one subscription")
        try client.send(raw: RESPTestClient.encode(["SUBSCRIBE", "c"]))
        #expect(try client.read().elements?[2].int == 3)
        #expect(try client.call("SUBSCRIBE", "d").errorCode == "ERR")
        // A message to the room comes once.
        #expect(try acme.owner.call("POST", "general", "once") == .integer(1))
        let pushed = try client.read()
        #expect(pushed.elements?.first?.string == "message")
        // Unsubscribing by the other name ends the one subscription.
        try client.send(raw: RESPTestClient.encode(["UNSUBSCRIBE", "general"]))
        #expect(try client.read().elements?[2].int == 2)
        #expect(try acme.owner.call("POST", "general", "not for you") == .integer(2))
        #expect(try acme.owner.call("POST", "b", "for you") == .integer(1))
        let next = try client.read()
        #expect(next.elements?[1].string == "b", "got \(next)")
        #expect(server.stop() == 0)
    }

    @Test func subscriptionsStopAtTheDefaultMaximumAndMemoryStaysBounded() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        let acme = try Self.tenant(server)
        let baseline = server.residentBytes()
        for batch in 0..<10 {
            let rooms = (0..<1000).map { "room-\(batch)-\($0)" }
            try acme.owner.send(raw: RESPTestClient.encode(["SUBSCRIBE"] + rooms))
            for index in 0..<1000 {
                let reply = try acme.owner.read()
                #expect(reply.elements?[2].int == Int64(batch * 1000 + index + 1), "\(reply)")
            }
        }
        // The 10,001st room is refused.
        #expect(try acme.owner.call("SUBSCRIBE", "one-more").errorText?.hasPrefix("ERR max-subscriptions") == true)
        let grown = server.residentBytes() - baseline
        #expect(grown < 64 * Self.mebibyte, "resident memory grew by \(grown >> 20) MiB for 10,000 subscriptions")
        #expect(server.stop() == 0)
    }

    @Test(.timeLimit(.minutes(2)))
    func subscribersThatNeverReadAreDisconnectedAndMemoryStaysBounded() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir, ["--client-output-buffer-limit-pubsub", "2mb 1mb 60"])
        let acme = try Self.tenant(server)
        var sleepers: [RESPTestClient] = []
        for _ in 0..<10 {
            let sleeper = try server.login("alice@acme", acme.token)
            sleeper.shrinkReceiveBuffer()
            try sleeper.send(raw: RESPTestClient.encode(["SUBSCRIBE", "flood"]))
            sleepers.append(sleeper)
        }
        let reader = try server.login("alice@acme", acme.token)
        try reader.send(raw: RESPTestClient.encode(["SUBSCRIBE", "flood"]))
        #expect(try reader.read().elements?.first?.string == "subscribe")
        let baseline = server.residentBytes()
        let text = String(repeating: "z", count: 60_000)
        // 30 MB of pushes per subscriber if nobody were cut off: 300 MB in all.
        for batch in 0..<10 {
            let replies = try acme.owner.pipeline((0..<50).map { _ in ["POST", "flood", text] })
            #expect(replies.allSatisfy { $0.int != nil }, "batch \(batch): the poster is never slowed to errors")
            for _ in 0..<50 {
                #expect(try reader.read().elements?.first?.string == "message")
            }
        }
        let grown = server.residentBytes() - baseline
        #expect(grown < 80 * Self.mebibyte, "resident memory grew by \(grown >> 20) MiB")
        for (index, sleeper) in sleepers.enumerated() {
            // Its subscribe reply and the pushes the kernel held, then the end: the server closed it.
            let outcome = Self.readUntilClosed(sleeper)
            #expect(outcome == "closed", "subscriber \(index): \(outcome)")
        }
        #expect(server.stderrText().contains("client-output-buffer-limit-pubsub"))
        #expect(server.stop() == 0)
    }

    @Test func aSubscriberOverTheSoftLimitForItsSecondsIsDisconnected() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // No hard limit: only the soft one (256 KB for a second) can cut the sleeper off.
        let server = try Self.server(dir, ["--client-output-buffer-limit-pubsub", "0 256kb 1"])
        let acme = try Self.tenant(server)
        let sleeper = try server.login("alice@acme", acme.token)
        sleeper.shrinkReceiveBuffer()
        try sleeper.send(raw: RESPTestClient.encode(["SUBSCRIBE", "flood"]))
        let text = String(repeating: "s", count: 30_000)
        var posted = 0
        try waitUntil("the sleeper to be disconnected", seconds: 60) {
            let replies = try acme.owner.pipeline((0..<10).map { _ in ["POST", "flood", text] })
            posted += replies.count
            return server.stderrText().contains("client-output-buffer-limit-pubsub")
        }
        // Posting went on for the soft limit's second after the sleeper passed it.
        #expect(posted * 30_000 > 2 * (256 << 10), "posted \(posted)")
        #expect(Self.readUntilClosed(sleeper) == "closed")
        #expect(server.stop() == 0)
    }

    @Test func roomsArePagedAtTenThousand() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        let acme = try Self.tenant(server)
        let names = (0..<10_001).map { String(format: "room-%05d", $0) }
        for chunk in stride(from: 0, to: names.count, by: 2000) {
            let replies = try acme.owner.pipeline(
                names[chunk..<min(names.count, chunk + 2000)].map { ["POST", $0, "x"] }
            )
            #expect(replies.allSatisfy { $0.int == 1 })
        }
        let first = try #require(try acme.owner.call("ROOMS").elements)
        #expect(first.count == 10_000)
        #expect(first.last?.elements?.first?.string == "room-09999")
        let rest = try #require(try acme.owner.call("ROOMS", "AFTER", "room-09999").elements)
        #expect(rest.map { $0.elements?.first?.string } == ["room-10000"])
        let page = try #require(try acme.owner.call("ROOMS", "AFTER", "room-00010", "LIMIT", "3").elements)
        #expect(page.map { $0.elements?.first?.string } == ["room-00011", "room-00012", "room-00013"])
        #expect(try acme.owner.call("ROOMS", "LIMIT").errorCode == "ERR")
        #expect(server.stop() == 0)
    }

    @Test func historyPagesAreAtMost4MiBAndPagingMissesNothing() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        let acme = try Self.tenant(server)
        let text = String(repeating: "h", count: 65_536)
        let posted = try acme.owner.pipeline((0..<100).map { _ in ["POST", "big", text] })
        #expect(posted.last == .integer(100))
        let newest = try #require(try acme.owner.call("HISTORY", "big", "LIMIT", "1000").elements)
        #expect(newest.count == 64, "64 × 64 KiB = 4 MiB")
        #expect(newest.last?.elements?.first?.int == 100)
        let older = try #require(
            try acme.owner.call("HISTORY", "big", "BEFORE", "37", "LIMIT", "1000").elements
        )
        #expect(older.map { $0.elements?.first?.int } == (1...36).map { Int64($0) })
        let fromStart = try #require(try acme.owner.call("HISTORY", "big", "AFTER", "0", "LIMIT", "1000").elements)
        #expect(fromStart.first?.elements?.first?.int == 1)
        #expect(fromStart.count == 64)
        #expect(server.stop() == 0)
    }

    @Test func bigRepliesToClientsThatDoNotReadKeepMemoryBounded() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.server(dir)
        let acme = try Self.tenant(server)
        let text = String(repeating: "0123456789", count: 6553)
        _ = try acme.owner.pipeline((0..<200).map { _ in ["POST", "big", text] })
        let baseline = server.residentBytes()
        // Six connections each ask for 200 replies of 4 MiB (4.8 GB in all) and read none: each
        // reply is over the connection's reply window on its own.
        var greedy: [RESPTestClient] = []
        var senders: [Thread] = []
        for _ in 0..<6 {
            let client = try server.login("alice@acme", acme.token)
            client.shrinkReceiveBuffer()
            let requests = (0..<200).flatMap { _ in RESPTestClient.encode(["HISTORY", "big", "LIMIT", "1000"]) }
            let sender = Thread { try? client.send(raw: requests) }
            sender.start()
            greedy.append(client)
            senders.append(sender)
        }
        // Everyone else is served meanwhile; the server's memory is sampled while they stall.
        var peak = 0
        for index in 1...40 {
            #expect(try acme.owner.call("POST", "other", "m\(index)") == .integer(Int64(index)))
            peak = max(peak, server.residentBytes())
            usleep(50_000)
        }
        let grown = peak - baseline
        // What one such connection can hold: 4 MiB of queued replies and one more, the reply being
        // written, and NIO's pending write: under 32 MiB each (the landed main held 250 MB each).
        #expect(grown < 6 * 32 * Self.mebibyte, "resident memory grew by \(grown >> 20) MiB")
        for client in greedy { client.shutdown() }
        #expect(server.stop() == 0)
    }
}
