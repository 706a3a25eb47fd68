import ArgumentParser
import DequeModule
import Foundation
import Histogram
import NIOCore
import NIOPosix

/// What one load connection measured.
struct ConnectionResult: Sendable {
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    var replies = 0
    var errors = 0
    var firstError: String?
}

/// One connection: AUTH, then `pipeline` requests in flight until the deadline, each reply's
/// latency (from its request's write) recorded in microseconds.
final class LoadConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Reply
    typealias OutboundOut = ByteBuffer

    let user: String
    let token: String
    /// The rooms requests go to in turn: `general`, or one per tenant in the path form.
    let rooms: [String]
    let texts: [String]
    var next: Int
    let mix: TenantBench.Mix
    let pipeline: Int
    let deadline: NIODeadline
    var promise: EventLoopPromise<ConnectionResult>?
    var sent: Deque<NIODeadline> = []
    var authenticated = false
    var result = ConnectionResult()
    var count = 0

    init(
        user: String,
        token: String,
        rooms: [String],
        texts: [String],
        offset: Int,
        mix: TenantBench.Mix,
        pipeline: Int,
        deadline: NIODeadline
    ) {
        self.user = user
        self.token = token
        self.rooms = rooms
        self.texts = texts
        self.next = offset
        self.mix = mix
        self.pipeline = pipeline
        self.deadline = deadline
    }

    func done(_ loop: EventLoop) -> EventLoopFuture<ConnectionResult> {
        let promise = loop.makePromise(of: ConnectionResult.self)
        loop.execute { self.promise = promise }
        return promise.futureResult
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(Self.wrapOutboundOut(encode(["AUTH", self.user, self.token], context)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply = Self.unwrapInboundIn(data)
        guard self.authenticated else {
            guard !reply.isError else {
                self.finish(context, error: "AUTH: \(reply.summary)")
                return
            }
            self.authenticated = true
            for _ in 0..<self.pipeline { self.send(context) }
            context.flush()
            return
        }
        if let started = self.sent.popFirst() {
            let micros = (NIODeadline.now() - started).nanoseconds / 1000
            _ = self.result.histogram.record(UInt64(max(0, micros)))
        }
        self.result.replies += 1
        if reply.isError {
            self.result.errors += 1
            self.result.firstError = self.result.firstError ?? reply.summary
        }
        if NIODeadline.now() < self.deadline {
            self.send(context)
            context.flush()
        } else if self.sent.isEmpty {
            self.finish(context, error: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.finish(context, error: "\(error)")
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(context, error: self.sent.isEmpty ? nil : "connection closed")
    }

    private func send(_ context: ChannelHandlerContext) {
        self.count += 1
        let text = self.texts[self.next % self.texts.count]
        let room = self.rooms[self.next % self.rooms.count]
        self.next &+= 1
        let words =
            self.mix == .postHistory && self.count % 5 == 0
            ? ["HISTORY", room, "LIMIT", "50"] : ["POST", room, text]
        self.sent.append(.now())
        context.write(Self.wrapOutboundOut(encode(words, context)), promise: nil)
    }

    private func finish(_ context: ChannelHandlerContext, error: String?) {
        guard let promise = self.promise else { return }
        self.promise = nil
        if let error { self.result.firstError = self.result.firstError ?? error }
        promise.succeed(self.result)
        context.close(promise: nil)
    }
}

/// A subscriber of a tenant's `general`, counting the pushes it receives until the deadline (and a second).
final class SubscriberCounter: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Reply
    typealias OutboundOut = ByteBuffer

    let user: String
    let token: String
    let deadline: NIODeadline
    var promise: EventLoopPromise<Int>?
    var pushes = 0
    var replies = 0

    init(user: String, token: String, deadline: NIODeadline) {
        self.user = user
        self.token = token
        self.deadline = deadline
    }

    func done(_ loop: EventLoop) -> EventLoopFuture<Int> {
        let promise = loop.makePromise(of: Int.self)
        loop.execute {
            self.promise = promise
            loop.scheduleTask(deadline: self.deadline + .seconds(1)) {
                self.promise?.succeed(self.pushes)
                self.promise = nil
            }
        }
        return promise.futureResult
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(Self.wrapOutboundOut(encode(["AUTH", self.user, self.token], context)), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(encode(["SUBSCRIBE", "general"], context)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.replies += 1
        // The AUTH reply and the subscription's confirmation come first; every later array is a push.
        if self.replies > 2 { self.pushes += 1 }
    }
}

func encode(_ words: [String], _ context: ChannelHandlerContext) -> ByteBuffer {
    var buffer = context.channel.allocator.buffer(capacity: 64)
    buffer.writeString("*\(words.count)\r\n")
    for word in words {
        buffer.writeString("$\(word.utf8.count)\r\n")
        buffer.writeString(word)
        buffer.writeString("\r\n")
    }
    return buffer
}

/// A blocking client for the setup (creating tenants), over a plain socket.
final class SyncClient {
    let fd: Int32

    init(host: String, port: Int) throws {
        self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw ValidationError("cannot connect to \(host):\(port)") }
    }

    /// Sends a command; returns a reply's bulk strings (an array's, flattened) or its line.
    func call(_ words: [String]) throws -> [String] {
        var request = "*\(words.count)\r\n"
        for word in words { request += "$\(word.utf8.count)\r\n\(word)\r\n" }
        let bytes = Array(request.utf8)
        _ = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress, $0.count, 0) }
        var buffer = ByteBuffer()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            var probe = buffer
            if try RESPReplyDecoder.skip(&probe) { break }
            let got = chunk.withUnsafeMutableBytes { Glibc.recv(self.fd, $0.baseAddress, $0.count, 0) }
            guard got > 0 else { throw ValidationError("the server closed the connection") }
            buffer.writeBytes(chunk[0..<got])
        }
        let text = String(buffer: buffer)
        if text.hasPrefix("-") { throw ValidationError("\(words.first ?? ""): \(text.prefix(200))") }
        // Bulk strings of a flat array: every line after a `$n` line.
        let lines = text.components(separatedBy: "\r\n")
        var values: [String] = []
        var index = 0
        while index < lines.count {
            if lines[index].hasPrefix("$"), index + 1 < lines.count {
                values.append(lines[index + 1])
                index += 2
            } else {
                index += 1
            }
        }
        return values.isEmpty ? [lines.first ?? ""] : values
    }

    func close() {
        _ = Glibc.close(self.fd)
    }
}
