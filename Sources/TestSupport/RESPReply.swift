/// A reply as a test client reads it.
public indirect enum RESPReply: Sendable, Hashable, CustomStringConvertible {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case null
    case array([RESPReply])
    case map([RESPReply])
    case push([RESPReply])

    /// A bulk string's text.
    public var string: String? {
        switch self {
        case .bulk(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .simple(let text): return text
        default: return nil
        }
    }

    /// An integer's value.
    public var int: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    /// An array's (or push's) elements.
    public var elements: [RESPReply]? {
        switch self {
        case .array(let elements), .push(let elements): return elements
        default: return nil
        }
    }

    /// The error's text, `CODE message`.
    public var errorText: String? {
        if case .error(let text) = self { return text }
        return nil
    }

    /// The error's code.
    public var errorCode: String? {
        self.errorText.map { String($0.prefix { $0 != " " }) }
    }

    /// A field/value reply (flat array under RESP2, map under RESP3) as a dictionary of its values.
    public var fields: [String: RESPReply]? {
        let flat: [RESPReply]
        switch self {
        case .array(let elements), .map(let elements): flat = elements
        default: return nil
        }
        guard flat.count % 2 == 0 else { return nil }
        var result: [String: RESPReply] = [:]
        for index in stride(from: 0, to: flat.count, by: 2) {
            guard let key = flat[index].string else { return nil }
            result[key] = flat[index + 1]
        }
        return result
    }

    public var description: String {
        switch self {
        case .simple(let text): return "+\(text)"
        case .error(let text): return "-\(text)"
        case .integer(let value): return ":\(value)"
        case .bulk: return "\"\(self.string ?? "")\""
        case .null: return "nil"
        case .array(let elements): return "[" + elements.map(\.description).joined(separator: ", ") + "]"
        case .map(let elements): return "%{" + elements.map(\.description).joined(separator: ", ") + "}"
        case .push(let elements): return ">[" + elements.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

/// Parses RESP2/RESP3 replies from bytes.
public struct RESPReplyParser {
    private var bytes: [UInt8] = []
    private var offset = 0

    public init() {}

    public mutating func feed(_ data: some Sequence<UInt8>) {
        if self.offset > 0 && self.offset == self.bytes.count {
            self.bytes.removeAll(keepingCapacity: true)
            self.offset = 0
        }
        self.bytes.append(contentsOf: data)
    }

    /// The next whole reply, or nil when more bytes are needed.
    public mutating func next() throws -> RESPReply? {
        var cursor = self.offset
        guard let reply = try self.parse(&cursor) else { return nil }
        self.offset = cursor
        return reply
    }

    private func line(_ cursor: inout Int) -> String? {
        var index = cursor
        while index + 1 < self.bytes.count {
            if self.bytes[index] == 13 && self.bytes[index + 1] == 10 {
                let text = String(decoding: self.bytes[cursor..<index], as: UTF8.self)
                cursor = index + 2
                return text
            }
            index += 1
        }
        return nil
    }

    private func parse(_ cursor: inout Int) throws -> RESPReply? {
        guard cursor < self.bytes.count else { return nil }
        let marker = self.bytes[cursor]
        var position = cursor + 1
        guard let text = self.line(&position) else { return nil }
        let reply: RESPReply
        switch marker {
        case UInt8(ascii: "+"): reply = .simple(text)
        case UInt8(ascii: "-"): reply = .error(text)
        case UInt8(ascii: ":"): reply = .integer(Int64(text) ?? 0)
        case UInt8(ascii: "_"): reply = .null
        case UInt8(ascii: "$"):
            let length = Int(text) ?? -1
            if length < 0 {
                reply = .null
            } else {
                guard position + length + 2 <= self.bytes.count else { return nil }
                reply = .bulk(Array(self.bytes[position..<(position + length)]))
                position += length + 2
            }
        case UInt8(ascii: "*"), UInt8(ascii: "%"), UInt8(ascii: ">"):
            let count = Int(text) ?? -1
            if count < 0 {
                reply = .null
            } else {
                let total = marker == UInt8(ascii: "%") ? count * 2 : count
                var elements: [RESPReply] = []
                for _ in 0..<total {
                    guard let element = try self.parse(&position) else { return nil }
                    elements.append(element)
                }
                switch marker {
                case UInt8(ascii: "%"): reply = .map(elements)
                case UInt8(ascii: ">"): reply = .push(elements)
                default: reply = .array(elements)
                }
            }
        default:
            throw RESPTestClientError.malformedReply(text)
        }
        cursor = position
        return reply
    }
}
