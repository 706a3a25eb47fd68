import Foundation
import NIOCore
import NIOEmbedded
import RESP
import Synchronization
import TestSupport
import Testing

@testable import TenantServer

/// Per-tenant admission (issue 9, point 6): a tenant alone is held only by its connections' own
/// windows; while others are active it is held to its share, its connections stop reading, and
/// they are woken one at a time, in turn; a connection that waits for its client gives its share
/// back; and through a real server a flood and a quiet tenant both get every reply, in order.
@Suite("Fair shares between tenants")
struct FairShareTests {
    /// One connection's handler on an `EmbeddedChannel`, charging `account`.
    struct Connection {
        let channel: EmbeddedChannel
        let gate: RequestGate
        let counter: RequestHandlerTests.ReadCounter

        init(_ account: TenantAdmission.Account?) throws {
            (self.channel, self.gate, self.counter) = try RequestHandlerTests.channel(unbatched: true)
            self.gate.setAccount(account)
        }

        func send(pings count: Int) throws {
            try self.channel.writeInbound(ByteBuffer(string: String(repeating: "PING\r\n", count: count)))
        }

        /// The requests handed over since the last call (a wake-up queued on its loop runs first).
        func handed() throws -> [RESPRequest] {
            self.channel.embeddedEventLoop.run()
            var requests: [RESPRequest] = []
            while let next = try self.channel.readInbound(as: RESPRequest.self) { requests.append(next) }
            return requests
        }

        /// Its connection runs `count` of the requests it took: the charge goes back.
        func run(_ requests: [RESPRequest]) {
            for request in requests { self.gate.finished(request.cost) }
            self.channel.embeddedEventLoop.run()
        }
    }

    /// Makes `account`'s tenant active: one request handed over and left in flight.
    static func activate(_ account: TenantAdmission.Account) throws -> Connection {
        let other = try Connection(account)
        try other.send(pings: 1)
        #expect(try other.handed().count == 1)
        return other
    }

    /// A flood at its share: tenant "flood" with a connection whose 8 requests are in flight (the
    /// share of two active tenants in a window of 16), while tenant "quiet" has one.
    static func floodAtItsShare() throws -> (
        flood: TenantAdmission.Account, quiet: Connection, first: Connection, running: [RESPRequest]
    ) {
        let admission = TenantAdmission(window: 16, minimumShare: 4)
        let flood = admission.attach("flood")
        let quiet = try Self.activate(admission.attach("quiet"))
        let first = try Connection(flood)
        try first.send(pings: 8)
        let running = try first.handed()
        #expect(running.count == 8)
        return (flood, quiet, first, running)
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// Lets the cached count of active tenants expire, so that the next check sweeps again.
    static func sweepAgain() {
        Thread.sleep(forTimeInterval: 2 * Self.seconds(TenantAdmission.sweepInterval))
    }

    @Test func aTenantAloneIsNotHeldToAShare() throws {
        let admission = TenantAdmission(window: 16, minimumShare: 4)
        let account = admission.attach("a")
        let connection = try Connection(account)
        try connection.send(pings: 100)
        #expect(try connection.handed().count == 100)
        #expect(account.inFlight == 100)
        connection.run([RESPRequest](repeating: .command([ByteBuffer(string: "PING")]), count: 100))
        #expect(account.inFlight == 0)
    }

    @Test func whileAnotherTenantIsActiveAFloodIsHeldToItsShare() throws {
        // A span long enough that a stall of the test's own thread does not end it.
        let admission = TenantAdmission(window: 16, minimumShare: 4, activeSpan: .milliseconds(600))
        let flood = admission.attach("flood")
        let quiet = try Self.activate(admission.attach("quiet"))
        let connection = try Connection(flood)
        try connection.send(pings: 100)
        let first = try connection.handed()
        #expect(first.count == 8, "two tenants active: half of the window of 16")
        let readsBefore = connection.counter.reads
        connection.channel.read()
        #expect(connection.counter.reads == readsBefore, "the flood's socket is not read while it is at its share")
        // One of its requests runs: it is under its share, and takes half of it at once.
        connection.run([first[0]])
        #expect(try connection.handed().count == 4)
        #expect(flood.inFlight == 11)
        // The quiet tenant's request ran, but it still counts as active for a while.
        quiet.run([RESPRequest](repeating: .command([ByteBuffer(string: "PING")]), count: 1))
        Self.sweepAgain()
        connection.run(Array(first[1...3]))
        #expect(try connection.handed().isEmpty, "still at its share")
        connection.run([first[4]])
        #expect(try connection.handed().count == 4, "the quiet tenant is still active within its span")
        // Once it has been idle longer than the span, the flood is alone and takes everything.
        Thread.sleep(forTimeInterval: 1.5 * Self.seconds(admission.activeSpan))
        connection.run([first[5]])
        #expect(try connection.handed().count == 100 - 16)
        connection.channel.embeddedEventLoop.run()
        #expect(connection.counter.reads == readsBefore + 1, "everything parsed: the held read went out")
    }

    @Test func everyTenantAlwaysHasItsMinimumShare() throws {
        let admission = TenantAdmission(window: 16, minimumShare: 4)
        var others: [Connection] = []
        for index in 0..<10 { others.append(try Self.activate(admission.attach("t\(index)"))) }
        let connection = try Connection(admission.attach("busy"))
        try connection.send(pings: 20)
        #expect(try connection.handed().count == 4, "eleven tenants active: 16 / 11 < 4, the minimum")
        _ = others
    }

    @Test func aTenantsWaitingConnectionsAreWokenInTurn() throws {
        let (flood, quiet, first, running) = try Self.floodAtItsShare()
        let second = try Connection(flood)
        let third = try Connection(flood)
        try second.send(pings: 8)
        try third.send(pings: 8)
        #expect(try second.handed().isEmpty && third.handed().isEmpty, "the tenant is at its share")
        var secondTook: [RESPRequest] = []
        func whoTook() throws -> String {
            let bySecond = try second.handed()
            let byThird = try third.handed()
            secondTook += bySecond
            return "second \(bySecond.count), third \(byThird.count)"
        }
        // Each time the tenant goes under its share (8), the oldest waiting connection takes a
        // batch (half the share) and, with more to send, waits again at the back of the queue.
        first.run([running[0]])
        #expect(try whoTook() == "second 4, third 0")
        first.run(Array(running[1...4]))
        #expect(try whoTook() == "second 0, third 4")
        first.run(Array(running[5...7]))
        second.run([secondTook[0]])
        #expect(try whoTook() == "second 4, third 0", "round the queue")
        _ = quiet
    }

    @Test func aWakeUpNobodyTakesIsPassedOn() throws {
        let (flood, quiet, first, running) = try Self.floodAtItsShare()
        // A connection whose handler is gone, first in the queue: its wake-up goes to the next.
        let gone = RequestGate(bound: 1 << 20)
        gone.setAccount(flood)
        #expect(flood.wait(gone) == 0)
        let waiting = try Connection(flood)
        try waiting.send(pings: 2)
        #expect(try waiting.handed().isEmpty)
        first.run([running[0]])
        #expect(try waiting.handed().count == 2, "the gone connection's wake-up was passed on")
        // A closed connection leaves the queue; the next one is woken in its place.
        let closing = try Connection(flood)
        try closing.send(pings: 2)
        let last = try Connection(flood)
        try last.send(pings: 2)
        _ = try closing.channel.finish()
        first.run([running[1]])
        first.run([running[2]])
        #expect(try last.handed().count == 2, "the closed connection's turn went to the next")
        _ = quiet
    }

    /// A connection that leaves its tenant (AUTH as another, or closing) while it waits in its
    /// queue is woken to ask again, and the tenant's next waiter keeps its place.
    @Test func aWaitingConnectionThatLeavesItsTenantIsWokenAndTheQueueGoesOn() throws {
        let (flood, quiet, first, running) = try Self.floodAtItsShare()
        let leaving = try Connection(flood)
        try leaving.send(pings: 2)
        let next = try Connection(flood)
        try next.send(pings: 2)
        #expect(try leaving.handed().isEmpty && next.handed().isEmpty)
        leaving.gate.setAccount(nil)
        #expect(try leaving.handed().count == 2, "woken, and charged to no tenant now")
        #expect(try next.handed().isEmpty, "the flood is still at its share")
        first.run([running[0]])
        #expect(try next.handed().count == 2, "the queue went on without the connection that left")
        _ = quiet
    }

    /// Bytes read before the handler began to wait still arrive while it waits; a wake-up that
    /// comes after they were handed over must still let the socket be read again.
    @Test func requestsReadWhileWaitingDoNotLeaveTheSocketHeld() throws {
        let (_, quiet, connection, running) = try Self.floodAtItsShare()
        try connection.send(pings: 2)
        #expect(try connection.handed().isEmpty)
        let readsBefore = connection.counter.reads
        connection.channel.read()
        #expect(connection.counter.reads == readsBefore, "held while the tenant is at its share")
        // Requests run (the wake-up is queued on the loop, not yet run), and more bytes arrive:
        // they go over with those that waited, before the wake-up runs.
        connection.gate.finished(running[0].cost)
        connection.gate.finished(running[1].cost)
        try connection.channel.writeInbound(ByteBuffer(string: "PING\r\n"))
        var handed = 0
        while try connection.channel.readInbound(as: RESPRequest.self) != nil { handed += 1 }
        #expect(handed == 3)
        connection.channel.embeddedEventLoop.run()
        #expect(connection.counter.reads == readsBefore + 1, "the held read went out once the wake-up ran")
        _ = quiet
    }

    /// A queued connection whose own read finds room (the wake-up went to one ahead of it) takes
    /// it, leaves the queue and reads on at once, instead of waiting for its turn to come round.
    @Test func aWaitingConnectionWhoseReadFindsRoomLeavesTheQueue() throws {
        let (flood, quiet, first, running) = try Self.floodAtItsShare()
        let ahead = try Connection(flood)
        try ahead.send(pings: 1)
        let late = try Connection(flood)
        try late.send(pings: 1)
        #expect(try ahead.handed().isEmpty && late.handed().isEmpty)
        let readsBefore = late.counter.reads
        late.channel.read()
        #expect(late.counter.reads == readsBefore)
        // Room for one batch: the wake-up goes to the connection ahead (its loop not run yet).
        first.gate.finished(running[0].cost)
        try late.channel.writeInbound(ByteBuffer(string: "PING\r\n"))
        var handed = 0
        while try late.channel.readInbound(as: RESPRequest.self) != nil { handed += 1 }
        #expect(handed == 2)
        #expect(late.counter.reads == readsBefore + 1, "it left the queue and reads again at once")
        _ = (quiet, try ahead.handed())
    }

    @Test func aConnectionWaitingForItsClientGivesItsShareBack() throws {
        let (flood, quiet, stuck, held) = try Self.floodAtItsShare()
        let other = try Connection(flood)
        try other.send(pings: 4)
        #expect(try other.handed().isEmpty)
        // Its client stopped reading: its reply queue is full, and it parks.
        stuck.gate.park()
        other.channel.embeddedEventLoop.run()
        #expect(try other.handed().count == 4, "the tenant's other connection goes on")
        #expect(flood.inFlight == 4)
        // While it is parked, what it still reads is charged to nobody.
        try stuck.send(pings: 3)
        let more = try stuck.handed()
        #expect(more.count == 3 && flood.inFlight == 4)
        stuck.run(held + more)
        #expect(flood.inFlight == 4, "what was given back is not taken back twice")
        // Its client reads again: its requests are charged again.
        stuck.gate.unpark()
        try stuck.send(pings: 1)
        #expect(try stuck.handed().count == 1 && flood.inFlight == 5)
        _ = quiet
    }

    @Test func aConnectionThatChangesTenantGivesItsChargeBackAndChargesTheNewOne() throws {
        let admission = TenantAdmission(window: 16, minimumShare: 4)
        let first = admission.attach("a")
        let second = admission.attach("b")
        let connection = try Connection(first)
        try connection.send(pings: 3)
        let taken = try connection.handed()
        connection.gate.setAccount(second)
        #expect(first.inFlight == 0 && second.inFlight == 0)
        try connection.send(pings: 2)
        let newer = try connection.handed()
        #expect(second.inFlight == 2)
        connection.run(taken)
        #expect(first.inFlight == 0 && second.inFlight == 2, "the older requests were charged to nobody")
        connection.run(newer)
        #expect(second.inFlight == 0)
        admission.detach(first)
        #expect(admission.attach("a") !== first, "the last connection gone, the account goes")
    }

    /// Through a real server: one tenant floods from six connections, each with 600 POSTs in
    /// pipelines of 30, while another POSTs one at a time. The flood is held to its share (the waits are
    /// counted), and still every request of both is answered, in order, with its seq.
    @Test func aFloodAndAQuietTenantThroughTheServer() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (server, metricsPort) = try OperationsTests.startWithMetrics(
            dataDirectory: dir.path,
            arguments: ["--fair-share", "16"]
        )
        defer { _ = server.stop() }
        let admin = try server.operatorClient()
        let quietToken = try admin.createTenant(name: "Q", subdomain: "quiet", plan: "enterprise").token
        let floodToken = try admin.createTenant(name: "F", subdomain: "flood", plan: "enterprise").token
        let quiet = try server.login("alice@quiet", quietToken)
        let floods = try (0..<6).map { _ in try server.login("alice@flood", floodToken) }
        #expect(try quiet.call("POST", "room", "first") == .integer(1))
        let perConnection = 600
        let quietSeqs = Mutex<[Int64]>([])
        let floodSeqs = Mutex<[Int: [Int64]]>([:])
        let floodsDone = Atomic<Int>(0)
        // Threads of their own (not a dispatch pool, which may run them one after another on a
        // busy machine): the quiet tenant POSTs one at a time from before the flood to after it.
        let quietThread = Thread {
            var index = 0
            while floodsDone.load(ordering: .acquiring) < floods.count || index < 20 {
                guard case .integer(let seq) = try? quiet.call("POST", "room", "quiet \(index)") else { break }
                quietSeqs.withLock { $0.append(seq) }
                index += 1
            }
        }
        quietThread.start()
        try waitUntil("the quiet tenant is posting") { quietSeqs.withLock { $0.count } >= 10 }
        for (index, flood) in floods.enumerated() {
            Thread {
                // Pipelines of 30, one after another: the flood goes on for many sweeps.
                var replies: [RESPReply] = []
                for start in stride(from: 0, to: perConnection, by: 30) {
                    let commands = (start..<start + 30).map { ["POST", "room\(index % 2)", "flood \(index) \($0)"] }
                    replies += (try? flood.pipeline(commands)) ?? []
                }
                let seqs = replies.compactMap { reply -> Int64? in
                    if case .integer(let seq) = reply { return seq }
                    return nil
                }
                floodSeqs.withLock { $0[index] = seqs }
                floodsDone.add(1, ordering: .releasing)
            }.start()
        }
        try waitUntil("every client got its replies", seconds: 120) {
            floodsDone.load(ordering: .acquiring) == floods.count && quietThread.isFinished
        }
        let quietAnswered = quietSeqs.withLock { $0 }
        #expect(
            quietAnswered == Array(2...Int64(quietAnswered.count + 1)),
            "the quiet tenant's POSTs, each answered in order"
        )
        let flooded = floodSeqs.withLock { $0 }
        #expect(flooded.count == 6 && flooded.values.allSatisfy { $0.count == perConnection })
        #expect(flooded.values.allSatisfy { $0 == $0.sorted() }, "each connection's seqs in its order")
        for room in 0..<2 {
            // Three connections POSTed to each room: its seqs, each given once.
            let seqs = flooded.filter { $0.key % 2 == room }.values.joined()
            #expect(Set(seqs) == Set(1...Int64(3 * perConnection)), "room\(room): every seq once")
            let history = try floods[0].call("HISTORY", "room\(room)", "LIMIT", "1")
            #expect(history.elements?.first?.elements?.first == .integer(Int64(3 * perConnection)))
        }
        let metrics = try OperationsTests.httpGet(port: metricsPort, path: "/metrics")
        let waits = metrics.split(separator: "\n").first { $0.hasPrefix("tenantd_fair_share_waits_total ") }
        let count = waits.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        #expect(count > 0, "the flood was held to its share: \(waits ?? "no such series")")
    }
}
