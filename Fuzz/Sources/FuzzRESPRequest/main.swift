import NIOCore
import RESP

// Small limits so that the too-big and too-many paths are reached with small inputs.
private let limits = RESPRequestParser.Limits(
    maxBulkLength: 64,
    maxInlineLength: 256,
    maxArgumentCount: 64,
    maxRequestBytes: 1024,
    unauthenticatedArgumentCount: 4,
    unauthenticatedBulkLength: 16
)

/// Feeds the input to a parser whole, then again in two pieces split where the first byte says,
/// as a connection receives it; both must end in the same commands. The first byte's low bit
/// says whether the client is authenticated (the stricter limits apply otherwise).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESPRequest(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    let authenticated = count == 0 || bytes[0] & 1 == 1
    let whole = parse([bytes[...]], authenticated: authenticated)
    let split = count == 0 ? 0 : Int(bytes[0]) % (count + 1)
    let pieces = parse([bytes[..<split], bytes[split...]], authenticated: authenticated)
    precondition(whole == pieces, "split input parsed differently: \(whole) vs \(pieces)")
    return 0
}

/// Every action up to the first that needs more data or closes the connection.
private func parse(_ pieces: [Slice<UnsafeRawBufferPointer>], authenticated: Bool) -> [RESPRequestParser.Action] {
    var parser = RESPRequestParser(limits: limits, authenticated: authenticated)
    var buffer = ByteBuffer()
    var actions: [RESPRequestParser.Action] = []
    for piece in pieces {
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: piece))
        while true {
            let before = buffer.readerIndex
            let saved = (parser: parser, buffer: buffer)
            let action = parser.next(&buffer)
            if case .protocolError = action, parser.hitUnauthenticatedLimit {
                // What a connection does when an AUTH before this request succeeds: the copy
                // restored, the same bytes parsed again under the wider limits.
                parser = saved.parser
                buffer = saved.buffer
                parser.authenticated = true
                continue
            }
            switch action {
            case .needMoreData:
                break
            case .protocolError:
                actions.append(action)
                return actions
            case .command, .tooBig:
                precondition(buffer.readerIndex > before, "a command was returned without consuming input")
                actions.append(action)
                continue
            }
            break
        }
    }
    return actions
}
