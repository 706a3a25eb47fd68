import NIOCore

/// One reply from the server: whether it was an error, and its first line for reports.
struct Reply {
    var isError: Bool
    var isPush: Bool
    var summary: String
}

/// Splits the server's byte stream into whole RESP2/RESP3 replies (nested arrays, maps and pushes
/// included), without keeping their contents: the bench counts and times replies.
struct RESPReplyDecoder: ByteToMessageDecoder {
    typealias InboundOut = Reply

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        var probe = buffer
        guard let first = probe.getInteger(at: probe.readerIndex, as: UInt8.self) else { return .needMoreData }
        guard try Self.skip(&probe) else { return .needMoreData }
        let length = probe.readerIndex - buffer.readerIndex
        let line = buffer.getString(at: buffer.readerIndex, length: min(length, 120)) ?? ""
        buffer.moveReaderIndex(forwardBy: length)
        let summary = String(line.prefix { $0 != "\r" })
        context.fireChannelRead(
            Self.wrapInboundOut(
                Reply(isError: first == UInt8(ascii: "-"), isPush: first == UInt8(ascii: ">"), summary: summary)
            )
        )
        return .continue
    }

    /// Moves past one whole reply; false when it has not all arrived yet.
    static func skip(_ buffer: inout ByteBuffer) throws -> Bool {
        guard let type = buffer.readInteger(as: UInt8.self), let line = readLine(&buffer) else { return false }
        switch type {
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "_"), UInt8(ascii: "#"),
            UInt8(ascii: ","):
            return true
        case UInt8(ascii: "$"), UInt8(ascii: "="), UInt8(ascii: "!"):
            guard let length = Int(line) else { throw ReplyError.malformed(line) }
            if length < 0 { return true }
            guard buffer.readableBytes >= length + 2 else { return false }
            buffer.moveReaderIndex(forwardBy: length + 2)
            return true
        case UInt8(ascii: "*"), UInt8(ascii: ">"), UInt8(ascii: "~"), UInt8(ascii: "%"):
            guard var count = Int(line) else { throw ReplyError.malformed(line) }
            if type == UInt8(ascii: "%") { count *= 2 }
            for _ in 0..<max(0, count) {
                guard try skip(&buffer) else { return false }
            }
            return true
        default:
            throw ReplyError.malformed("type byte \(type)")
        }
    }

    private static func readLine(_ buffer: inout ByteBuffer) -> String? {
        let view = buffer.readableBytesView
        guard let end = view.firstIndex(of: UInt8(ascii: "\r")), end + 1 < view.endIndex else { return nil }
        let line = buffer.readString(length: end - view.startIndex) ?? ""
        buffer.moveReaderIndex(forwardBy: 2)
        return line
    }
}

enum ReplyError: Error {
    case malformed(String)
}
