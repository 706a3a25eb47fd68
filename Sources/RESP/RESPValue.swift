import NIOCore

/// A reply value, encoded as RESP2 or RESP3 by ``RESPEncoder``.
public enum RESPValue: Sendable, Hashable {
    /// `+text`: a status reply.
    case simpleString(String)
    /// `-CODE message`: an error reply.
    case error(String)
    /// `:n`.
    case integer(Int64)
    /// `$len` and the UTF-8 bytes of the string.
    case bulkString(String)
    /// `$len` and raw bytes.
    case bulkBytes([UInt8])
    /// RESP2 `$-1`, RESP3 `_`.
    case null
    /// `*n`.
    case array([RESPValue])
    /// RESP3 `%n` map of key/value pairs; a flat array of the keys and values under RESP2.
    case map([RESPValue])
    /// RESP3 `>n` push; an array under RESP2.
    case push([RESPValue])
    /// A reply already encoded, written as it is under either protocol: only for replies whose
    /// bytes are the same under RESP2 and RESP3 (arrays, integers and bulk strings; never a map,
    /// a null, a push or anything else the two encode differently).
    case encoded(ByteBuffer)

    /// The `+OK` reply.
    public static let ok = RESPValue.simpleString("OK")

    /// PING's `+PONG`, encoded once (the same in RESP2 and RESP3): a pipelined PING costs a copy of
    /// seven bytes, not a scan of the text for line breaks and three writes.
    public static let pong = RESPValue.encoded(ByteBuffer(string: "+PONG\r\n"))

    /// A map from key/value pairs.
    public static func map(_ pairs: [(String, RESPValue)]) -> RESPValue {
        var flat: [RESPValue] = []
        flat.reserveCapacity(pairs.count * 2)
        for (key, value) in pairs {
            flat.append(.bulkString(key))
            flat.append(value)
        }
        return .map(flat)
    }
}

/// The reply protocol a connection has negotiated with `HELLO`.
public enum RESPVersion: Int, Sendable {
    /// RESP2, the default.
    case resp2 = 2
    /// RESP3.
    case resp3 = 3
}
