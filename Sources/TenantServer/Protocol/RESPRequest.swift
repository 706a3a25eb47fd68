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

    /// Its size on the wire as a RESP array of bulk strings (an inline command is counted as if
    /// it had come framed): what `tenant_bytes_in_total` adds up.
    var wireBytes: Int {
        switch self {
        case .command(let words):
            var total = 3 + Self.digits(words.count)
            for word in words { total += 5 + Self.digits(word.readableBytes) + word.readableBytes }
            return total
        case .tooBig, .protocolError:
            return 0
        }
    }

    private static func digits(_ value: Int) -> Int {
        var digits = 1
        var rest = value
        while rest >= 10 {
            rest /= 10
            digits += 1
        }
        return digits
    }

    /// What the request holds in memory until it is answered, as ``RequestGate`` counts it.
    var cost: Int {
        switch self {
        case .command(let words):
            var total = 0
            for word in words { total += word.readableBytes + RESPLimits.argumentOverhead }
            return total
        case .tooBig, .protocolError:
            return RESPLimits.argumentOverhead
        }
    }
}
