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

    /// What the request holds in memory until it is answered, as ``RequestGate`` counts it.
    var cost: Int {
        switch self {
        case .command(let words):
            var total = 0
            for word in words { total += word.readableBytes + RESPRequestParser.Limits.argumentOverhead }
            return total
        case .tooBig, .protocolError:
            return RESPRequestParser.Limits.argumentOverhead
        }
    }
}
