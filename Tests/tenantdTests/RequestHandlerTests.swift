import NIOCore
import NIOEmbedded
import RESP
import Testing

@testable import TenantServer

/// The connection's request handler in process, on an `EmbeddedChannel`: order, the gate's
/// back-pressure on parsing and on the socket's reads, the unauthenticated one-at-a-time rule,
/// and the end of input passed on after every request before it.
@Suite("Request handler")
struct RequestHandlerTests {
    /// Counts the `read()` calls that reach the socket.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0

        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }
    }

    static func channel(
        bound: Int = 1 << 20,
        authenticated: Bool = true,
        unbatched: Bool = true
    ) throws -> (EmbeddedChannel, RequestGate, ReadCounter) {
        let gate = RequestGate(bound: bound)
        if authenticated { gate.authenticated() }
        let counter = ReadCounter()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(
            RESPRequestHandler(limits: RESPRequestParser.Limits(), gate: gate)
        )
        if unbatched { try channel.pipeline.syncOperations.addHandler(Unbatcher()) }
        return (channel, gate, counter)
    }

    /// Passes the handler's batches on one request at a time, as most tests read them.
    final class Unbatcher: ChannelInboundHandler {
        typealias InboundIn = [RESPRequest]
        typealias InboundOut = RESPRequest

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            for request in Self.unwrapInboundIn(data) { context.fireChannelRead(Self.wrapInboundOut(request)) }
        }
    }

    @Test func theRequestsOfOneReadComeInOneBatch() throws {
        let (channel, _, _) = try Self.channel(unbatched: false)
        try channel.writeInbound(ByteBuffer(string: "PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPOST r"))
        let first = try channel.readInbound(as: [RESPRequest].self)
        #expect(first?.map(Self.words) == [["PING"], ["ECHO", "hi"]])
        #expect(try channel.readInbound(as: [RESPRequest].self) == nil, "one batch per read")
        try channel.writeInbound(ByteBuffer(string: " x\r\nPING\r\n"))
        let second = try channel.readInbound(as: [RESPRequest].self)
        #expect(second?.map(Self.words) == [["POST", "r", "x"], ["PING"]])
        _ = try channel.finish()
    }

    static func words(_ request: RESPRequest?) -> [String]? {
        guard case .command(let words) = request else { return nil }
        return words.map { String(buffer: $0) }
    }

    @Test func pipelinedRequestsComeOutInOrder() throws {
        let (channel, _, _) = try Self.channel()
        try channel.writeInbound(ByteBuffer(string: "PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPOST r \"a b\"\r\n"))
        #expect(Self.words(try channel.readInbound(as: RESPRequest.self)) == ["PING"])
        #expect(Self.words(try channel.readInbound(as: RESPRequest.self)) == ["ECHO", "hi"])
        #expect(Self.words(try channel.readInbound(as: RESPRequest.self)) == ["POST", "r", "a b"])
        #expect(try channel.readInbound(as: RESPRequest.self) == nil)
        _ = try channel.finish()
    }

    @Test func pastTheBoundParsingAndReadingStopUntilRequestsAreAnswered() throws {
        let (channel, gate, counter) = try Self.channel(bound: 200)
        let request = "*2\r\n$4\r\nECHO\r\n$60\r\n" + String(repeating: "x", count: 60) + "\r\n"
        try channel.writeInbound(ByteBuffer(string: String(repeating: request, count: 5)))
        // Each request counts 4 + 60 bytes and 2 × 32 of overhead (128): the second passes 200.
        func handed() throws -> [RESPRequest] {
            var requests: [RESPRequest] = []
            while let next = try channel.readInbound(as: RESPRequest.self) { requests.append(next) }
            return requests
        }
        let first = try handed()
        #expect(first.count == 2)
        #expect(gate.outstandingBytes == 256)
        let readsBefore = counter.reads
        channel.read()
        #expect(counter.reads == readsBefore, "the socket is not read while the requests wait")
        // The connection answers them: the handler resumes on its loop, and stops again.
        for request in first { gate.finished(request.cost) }
        channel.embeddedEventLoop.run()
        let second = try handed()
        #expect(second.count == 2)
        #expect(counter.reads == readsBefore, "still over the bound: the read is still held")
        for request in second { gate.finished(request.cost) }
        channel.embeddedEventLoop.run()
        #expect(try handed().count == 1)
        #expect(counter.reads == readsBefore + 1, "everything parsed: the held read went out")
        _ = try channel.finish()
    }

    @Test func beforeAuthenticationSmallRequestsArePipelinedAsUsual() throws {
        let (channel, _, _) = try Self.channel(authenticated: false)
        try channel.writeInbound(ByteBuffer(string: "PING\r\nPING\r\nHELLO 3\r\n"))
        var handed = 0
        while try channel.readInbound(as: RESPRequest.self) != nil { handed += 1 }
        #expect(handed == 3, "none of them is over the unauthenticated limits: no waiting")
        _ = try channel.finish()
    }

    @Test func aRequestOverTheAnonymousLimitsWaitsForTheAuthBeforeIt() throws {
        let (channel, gate, _) = try Self.channel(authenticated: false)
        let big = "*2\r\n$4\r\nECHO\r\n$20000\r\n" + String(repeating: "y", count: 20000) + "\r\n"
        try channel.writeInbound(ByteBuffer(string: "AUTH alice@acme token\r\n" + big))
        let auth = try channel.readInbound(as: RESPRequest.self)
        #expect(Self.words(auth) == ["AUTH", "alice@acme", "token"])
        #expect(try channel.readInbound(as: RESPRequest.self) == nil, "judged only once AUTH is answered")
        // AUTH succeeded: the 20,000-byte argument is parsed under the wider limits.
        gate.authenticated()
        gate.finished(auth!.cost)
        channel.embeddedEventLoop.run()
        #expect(Self.words(try channel.readInbound(as: RESPRequest.self))?.last?.count == 20000)
        _ = try channel.finish()
    }

    @Test func withoutAuthenticationTheSameRequestIsAProtocolError() throws {
        let (channel, gate, _) = try Self.channel(authenticated: false)
        let big = "*2\r\n$4\r\nECHO\r\n$20000\r\n" + String(repeating: "y", count: 20000) + "\r\n"
        try channel.writeInbound(ByteBuffer(string: "AUTH alice@acme wrong\r\n" + big))
        let auth = try #require(try channel.readInbound(as: RESPRequest.self))
        gate.finished(auth.cost)
        channel.embeddedEventLoop.run()
        guard case .protocolError(let message) = try channel.readInbound(as: RESPRequest.self) else {
            Issue.record("no protocol error")
            return
        }
        #expect(message == "Protocol error: unauthenticated bulk length")
        _ = try channel.finish()
    }

    /// Records what reaches the connection: requests and the end of input.
    final class EventRecorder: ChannelInboundHandler {
        typealias InboundIn = RESPRequest
        var events: [String] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.events.append("request")
            context.fireChannelRead(data)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .some(.inputClosed) = event as? ChannelEvent { self.events.append("end") }
            context.fireUserInboundEventTriggered(event)
        }
    }

    @Test func theEndOfInputComesAfterEveryRequestBeforeIt() throws {
        let (channel, gate, _) = try Self.channel(bound: 10)
        let recorder = EventRecorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.writeInbound(ByteBuffer(string: "PING\r\nPING\r\nPING\r\nPI"))
        // Each PING is over the bound on its own: one is handed over, the end of input waits.
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(recorder.events == ["request"])
        while let request = try channel.readInbound(as: RESPRequest.self) {
            gate.finished(request.cost)
            channel.embeddedEventLoop.run()
        }
        // Every whole request, then the end; the partial "PI" is dropped, as Redis drops it.
        #expect(recorder.events == ["request", "request", "request", "end"])
        _ = try channel.finish()
    }
}
