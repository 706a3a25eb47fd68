import NIOCore
import RESP

/// One request as the connection sees it.
enum RESPRequest: Sendable {
    /// A command's words.
    case command([ByteBuffer])
    /// A command skipped for an argument over the size limit.
    case tooBig(String)
    /// Broken framing: answer and close.
    case protocolError(String)
}

/// Turns the byte stream into ``RESPRequest``s with ``RESPRequestParser``; after a protocol error it
/// discards everything, as the connection is about to close.
struct RESPRequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = RESPRequest

    private var parser: RESPRequestParser
    private var broken = false

    init(limits: RESPRequestParser.Limits) {
        self.parser = RESPRequestParser(limits: limits)
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if self.broken {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        switch self.parser.next(&buffer) {
        case .needMoreData:
            return .needMoreData
        case .command(let words):
            context.fireChannelRead(Self.wrapInboundOut(.command(words)))
        case .tooBig(let message):
            context.fireChannelRead(Self.wrapInboundOut(.tooBig(message)))
        case .protocolError(let message):
            self.broken = true
            buffer.moveReaderIndex(to: buffer.writerIndex)
            context.fireChannelRead(Self.wrapInboundOut(.protocolError(message)))
            return .needMoreData
        }
        return .continue
    }

    mutating func decodeLast(
        context: ChannelHandlerContext,
        buffer: inout ByteBuffer,
        seenEOF: Bool
    ) throws
        -> DecodingState
    {
        // A partial command at EOF is dropped, as Redis does.
        while try self.decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }
}
