import Foundation
import NIOCore
import NIOPosix
import RESP
import TenantEngine
import WAL

/// A reply from another tenantd, as the migration client reads it.
indirect enum PeerReply: Sendable {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8]?)
    case array([PeerReply])

    /// Fails with the peer's error as this server would answer it (its code kept).
    func checked() throws -> PeerReply {
        guard case .error(let message) = self else { return self }
        let space = message.firstIndex(of: " ") ?? message.endIndex
        let code = String(message[..<space])
        let text = space < message.endIndex ? String(message[message.index(after: space)...]) : ""
        let kind: TenantError.Kind
        switch code {
        case "EXISTS": kind = .alreadyExists
        case "NOTFOUND": kind = .notFound
        case "INVALID": kind = .invalid
        case "LOADING": kind = .unavailable
        case "IOERR": kind = .storageFailed
        case "WRONGPASS", "NOAUTH", "NOPERM": kind = .forbidden
        default: kind = .refused
        }
        throw TenantError(kind, "the destination answered: \(code) \(text)")
    }
}

/// Reads replies off the wire (RESP2 and RESP3 shapes a tenantd sends).
struct PeerReplyDecoder: ByteToMessageDecoder {
    typealias InboundOut = PeerReply

    /// How far the reply at the buffer's start has been framed: the bytes of whole values
    /// scanned, and for each open aggregate the values it still waits for. A peer that trickles
    /// a large reply costs one pass over its bytes, not one per read.
    private var scanned = 0
    private var open: [Int] = []
    private var values = 0

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard try self.frame(buffer) else {
            if buffer.readableBytes > FixedLimits.migrationReplyBytes {
                throw TenantError.invalid("the destination's reply is too large")
            }
            return .needMoreData
        }
        var copy = buffer
        var budget = FixedLimits.migrationReplyValues
        guard let reply = try Self.parse(&copy, depth: 0, budget: &budget) else {
            throw TenantError.invalid("the destination's reply does not parse")
        }
        buffer = copy
        context.fireChannelRead(Self.wrapInboundOut(reply))
        return .continue
    }

    /// Goes on framing the reply at the buffer's start from where the last read stopped.
    /// - Returns: true once the whole reply is in the buffer (the scan starts over for the next).
    private mutating func frame(_ buffer: ByteBuffer) throws -> Bool {
        let bytes = buffer.readableBytesView
        while true {
            var position = bytes.startIndex + self.scanned
            guard position < bytes.endIndex else { return false }
            let type = bytes[position]
            guard let end = bytes[(position + 1)...].firstIndex(of: UInt8(ascii: "\r")) else { return false }
            guard end + 1 < bytes.endIndex else { return false }
            guard end - position <= 64 else { throw TenantError.invalid("the destination's reply has a long header") }
            let text = String(decoding: bytes[(position + 1)..<end], as: UTF8.self)
            position = end + 2
            // Counted once the value is whole (a bulk string scanned again as it trickles in
            // counts once).
            guard self.values < FixedLimits.migrationReplyValues else {
                throw TenantError.invalid("the destination's reply holds too many values")
            }
            var children = 0
            switch type {
            case UInt8(ascii: "$"):
                guard let length = Int(text), length >= -1, length <= FixedLimits.migrationReplyBytes else {
                    throw TenantError.invalid("bad bulk length from the destination")
                }
                if length >= 0 {
                    guard bytes.endIndex - position >= length + 2 else { return false }
                    position += length + 2
                }
            case UInt8(ascii: "*"), UInt8(ascii: "%"), UInt8(ascii: ">"), UInt8(ascii: "~"):
                guard let count = Int(text), count >= -1, count <= 1_000_000 else {
                    throw TenantError.invalid("bad array length from the destination")
                }
                children = type == UInt8(ascii: "%") ? max(0, count) * 2 : max(0, count)
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "!"), UInt8(ascii: ":"), UInt8(ascii: "_"):
                break
            default:
                throw TenantError.invalid("unexpected reply type from the destination")
            }
            self.scanned = position - bytes.startIndex
            self.values += 1
            if children > 0 {
                guard self.open.count < 8 else { throw TenantError.invalid("the destination's reply nests too deep") }
                self.open.append(children)
                continue
            }
            // A whole value: it closes the aggregates it ends.
            while let last = self.open.last {
                if last > 1 {
                    self.open[self.open.count - 1] = last - 1
                    break
                }
                self.open.removeLast()
            }
            if self.open.isEmpty {
                self.scanned = 0
                self.values = 0
                return true
            }
        }
    }

    private static func line(_ buffer: inout ByteBuffer) -> String? {
        guard let end = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\r")),
            end + 1 < buffer.readableBytesView.endIndex
        else { return nil }
        let length = end - buffer.readerIndex
        let text = buffer.readString(length: length) ?? ""
        buffer.moveReaderIndex(forwardBy: 2)
        return text
    }

    static func parse(_ buffer: inout ByteBuffer, depth: Int, budget: inout Int) throws -> PeerReply? {
        guard depth < 8 else { throw TenantError.invalid("the destination's reply nests too deep") }
        budget -= 1
        guard budget >= 0 else { throw TenantError.invalid("the destination's reply holds too many values") }
        guard let type = buffer.readInteger(as: UInt8.self) else { return nil }
        guard let text = Self.line(&buffer) else { return nil }
        switch type {
        case UInt8(ascii: "+"): return .simple(text)
        case UInt8(ascii: "-"), UInt8(ascii: "!"): return .error(text)
        case UInt8(ascii: ":"):
            guard let value = Int64(text) else { throw TenantError.invalid("bad integer from the destination") }
            return .integer(value)
        case UInt8(ascii: "_"): return .bulk(nil)
        case UInt8(ascii: "$"):
            guard let length = Int(text), length >= -1, length <= FixedLimits.migrationReplyBytes else {
                throw TenantError.invalid("bad bulk length from the destination")
            }
            if length == -1 { return .bulk(nil) }
            guard buffer.readableBytes >= length + 2, let bytes = buffer.readBytes(length: length) else { return nil }
            buffer.moveReaderIndex(forwardBy: 2)
            return .bulk(bytes)
        case UInt8(ascii: "*"), UInt8(ascii: "%"), UInt8(ascii: ">"), UInt8(ascii: "~"):
            guard let count = Int(text), count >= -1, count <= 1_000_000 else {
                throw TenantError.invalid("bad array length from the destination")
            }
            if count == -1 { return .bulk(nil) }
            let total = type == UInt8(ascii: "%") ? count * 2 : count
            var items: [PeerReply] = []
            items.reserveCapacity(min(total, 1024))
            for _ in 0..<total {
                guard let item = try Self.parse(&buffer, depth: depth + 1, budget: &budget) else { return nil }
                items.append(item)
            }
            return .array(items)
        default:
            throw TenantError.invalid("unexpected reply type from the destination")
        }
    }
}

/// Matches each reply to the request it answers, in order.
final class PeerRequestHandler: ChannelDuplexHandler {
    typealias InboundIn = PeerReply
    typealias OutboundIn = (ByteBuffer, EventLoopPromise<PeerReply>)
    typealias OutboundOut = ByteBuffer

    private var pending = CircularBuffer<EventLoopPromise<PeerReply>>()
    /// Set once the connection is gone: later requests fail at once instead of waiting out the
    /// reply timeout.
    private var closed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply = Self.unwrapInboundIn(data)
        guard !self.pending.isEmpty else {
            // A reply nobody asked for: the peer is not following the protocol.
            context.close(promise: nil)
            return
        }
        self.pending.removeFirst().succeed(reply)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let (request, replyPromise) = Self.unwrapOutboundIn(data)
        guard !self.closed else {
            replyPromise.fail(TenantError(.refused, "the connection to the destination is closed"))
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        self.pending.append(replyPromise)
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { error in replyPromise.fail(error) }
        written.futureResult.cascade(to: promise)
        context.write(Self.wrapOutboundOut(request), promise: written)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failAll(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.closed = true
        self.failAll(TenantError(.refused, "the destination closed the connection"))
        context.fireChannelInactive()
    }

    private func failAll(_ error: any Error) {
        while let promise = self.pending.popFirst() { promise.fail(error) }
    }
}

/// The source's end of a migration: `TENANT RECEIVE` over this same protocol, authenticated as
/// the destination's operator.
final class MigrationClient: MigrationPeer {
    /// How long one request may wait for its reply (PREPARE checks and syncs the whole copy).
    static let replyTimeout = TimeAmount.seconds(120)
    static let connectTimeout = TimeAmount.seconds(10)

    let channel: any Channel

    private init(channel: any Channel) {
        self.channel = channel
    }

    /// Connects and authenticates (`AUTH admin <token>`).
    static func connect(host: String, port: Int, token: String) async throws -> MigrationClient {
        guard (1...65535).contains(port) else { throw TenantError.invalid("port must be 1-65535") }
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(Self.connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(PeerReplyDecoder()))
                        try channel.pipeline.syncOperations.addHandler(PeerRequestHandler())
                    }
                }
                .connect(host: host, port: port)
                .get()
        } catch {
            throw TenantError(.refused, "cannot reach \(host):\(port): \(error)")
        }
        let client = MigrationClient(channel: channel)
        do {
            _ = try await client.send(["AUTH", "admin", token]).checked()
        } catch {
            await client.close()
            throw error
        }
        return client
    }

    /// Sends one command and waits for its reply.
    func send(_ words: [String]) async throws -> PeerReply {
        var buffer = self.channel.allocator.buffer(capacity: 64 + words.reduce(0) { $0 + $1.utf8.count + 16 })
        buffer.writeString("*\(words.count)\r\n")
        for word in words {
            buffer.writeString("$\(word.utf8.count)\r\n")
            buffer.writeString(word)
            buffer.writeString("\r\n")
        }
        let promise = self.channel.eventLoop.makePromise(of: PeerReply.self)
        let timeout = self.channel.eventLoop.scheduleTask(in: Self.replyTimeout) {
            promise.fail(TenantError(.refused, "the destination did not answer in time"))
            self.channel.close(promise: nil)
        }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        // A write that fails (the connection is gone, its handlers with it) fails the request.
        self.channel.writeAndFlush((buffer, promise)).whenFailure { error in promise.fail(error) }
        return try await promise.futureResult.get()
    }

    private func receive(
        _ id: String,
        _ migration: String,
        _ step: String,
        _ rest: [String] = []
    ) async throws -> PeerReply {
        try await self.send(["TENANT", "RECEIVE", id, migration, step] + rest).checked()
    }

    /// Steps that answer `+OK` answer exactly that: anything else means the replies and the
    /// requests no longer line up, and the connection is not trusted further.
    private func expectOK(_ reply: PeerReply) throws {
        guard case .simple("OK") = reply else {
            self.channel.close(promise: nil)
            throw TenantError(.refused, "the destination's reply is not +OK")
        }
    }

    func begin(id: String, migration: String) async throws -> [MigrationFile] {
        guard case .array(let items) = try await self.receive(id, migration, "BEGIN") else {
            throw TenantError.invalid("the destination's BEGIN reply is not a list")
        }
        return try items.map { item in
            guard case .array(let fields) = item, fields.count == 3, case .bulk(let path?) = fields[0],
                case .integer(let size) = fields[1], case .integer(let crc) = fields[2], size >= 0,
                let crc32 = UInt32(exactly: crc)
            else { throw TenantError.invalid("the destination's BEGIN reply is malformed") }
            return MigrationFile(path: String(decoding: path, as: UTF8.self), size: Int(size), crc: crc32)
        }
    }

    func chunk(id: String, migration: String, path: String, offset: Int, bytes: [UInt8]) async throws {
        let crc = bytes.withUnsafeBytes { CRC32C.checksum($0) }
        try self.expectOK(
            await self.receive(
                id,
                migration,
                "CHUNK",
                [path, "\(offset)", "\(crc)", Data(bytes).base64EncodedString()]
            )
        )
    }

    func prepare(id: String, migration: String, manifest: [MigrationFile]) async throws {
        var words = ["\(manifest.count)"]
        for file in manifest { words += [file.path, "\(file.size)", "\(file.crc)"] }
        try self.expectOK(await self.receive(id, migration, "PREPARE", words))
    }

    func commit(id: String, migration: String) async throws {
        try self.expectOK(await self.receive(id, migration, "COMMIT"))
    }

    func abort(id: String, migration: String) async throws {
        try await self.expectOK(self.receive(id, migration, "ABORT"))
    }

    func close() async {
        try? await self.channel.close()
    }
}
