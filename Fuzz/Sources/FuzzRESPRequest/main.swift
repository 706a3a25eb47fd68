import NIOCore
import RESP

// Small limits so that the too-big and too-many paths are reached with small inputs.
private let limits = RESPRequestParser.Limits(maxBulkLength: 64, maxInlineLength: 256, maxArgumentCount: 64)

/// Feeds the input to a parser whole, then again in two pieces split where the first byte says,
/// as a connection receives it; both must end in the same commands.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESPRequest(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    let whole = parse([bytes[...]])
    let split = count == 0 ? 0 : Int(bytes[0]) % (count + 1)
    let pieces = parse([bytes[..<split], bytes[split...]])
    precondition(whole == pieces, "split input parsed differently: \(whole) vs \(pieces)")
    return 0
}

/// Every action up to the first that needs more data or closes the connection.
private func parse(_ pieces: [Slice<UnsafeRawBufferPointer>]) -> [RESPRequestParser.Action] {
    var parser = RESPRequestParser(limits: limits)
    var buffer = ByteBuffer()
    var actions: [RESPRequestParser.Action] = []
    for piece in pieces {
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: piece))
        while true {
            let before = buffer.readerIndex
            let action = parser.next(&buffer)
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
