import NIOCore

/// Encodes ``RESPValue`` replies.
public enum RESPEncoder {
    /// Appends `value` encoded under `version` to `buffer`.
    /// - Complexity: O(n) in the encoded size.
    public static func encode(_ value: RESPValue, version: RESPVersion, into buffer: inout ByteBuffer) {
        switch value {
        case .simpleString(let text):
            buffer.writeInteger(UInt8(ascii: "+"))
            writeLine(text, into: &buffer)
        case .error(let text):
            buffer.writeInteger(UInt8(ascii: "-"))
            writeLine(text, into: &buffer)
        case .integer(let number):
            buffer.writeInteger(UInt8(ascii: ":"))
            buffer.writeString(String(number))
            buffer.writeStaticString("\r\n")
        case .bulkString(let text):
            buffer.writeInteger(UInt8(ascii: "$"))
            buffer.writeString(String(text.utf8.count))
            buffer.writeStaticString("\r\n")
            buffer.writeString(text)
            buffer.writeStaticString("\r\n")
        case .bulkBytes(let bytes):
            buffer.writeInteger(UInt8(ascii: "$"))
            buffer.writeString(String(bytes.count))
            buffer.writeStaticString("\r\n")
            buffer.writeBytes(bytes)
            buffer.writeStaticString("\r\n")
        case .null:
            buffer.writeStaticString(version == .resp3 ? "_\r\n" : "$-1\r\n")
        case .array(let elements):
            writeAggregate("*", elements, version: version, into: &buffer)
        case .map(let flat):
            if version == .resp3 {
                buffer.writeInteger(UInt8(ascii: "%"))
                buffer.writeString(String(flat.count / 2))
                buffer.writeStaticString("\r\n")
                for element in flat { encode(element, version: version, into: &buffer) }
            } else {
                writeAggregate("*", flat, version: version, into: &buffer)
            }
        case .push(let elements):
            writeAggregate(version == .resp3 ? ">" : "*", elements, version: version, into: &buffer)
        case .encoded(let bytes):
            buffer.writeImmutableBuffer(bytes)
        }
    }

    /// Appends `number` in decimal, without making a string of it.
    public static func writeDecimal(_ number: Int64, into buffer: inout ByteBuffer) {
        if number < 0 { buffer.writeInteger(UInt8(ascii: "-")) }
        writeDecimal(number.magnitude, into: &buffer)
    }

    /// Appends `number` in decimal, without making a string of it.
    public static func writeDecimal(_ number: UInt64, into buffer: inout ByteBuffer) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        var count = 0
        withUnsafeMutableBytes(of: &digits) { raw in
            var rest = number
            repeat {
                raw[23 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[(24 - count)...]))
        }
    }

    /// Appends a bulk string of `bytes`: `$len`, the bytes, CRLF.
    public static func writeBulk(_ bytes: some Collection<UInt8>, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "$"))
        writeDecimal(UInt64(bytes.count), into: &buffer)
        buffer.writeStaticString("\r\n")
        buffer.writeBytes(bytes)
        buffer.writeStaticString("\r\n")
    }

    /// Encodes one value into a new buffer.
    public static func encode(_ value: RESPValue, version: RESPVersion) -> ByteBuffer {
        var buffer = ByteBuffer()
        encode(value, version: version, into: &buffer)
        return buffer
    }

    private static func writeAggregate(
        _ marker: Character,
        _ elements: [RESPValue],
        version: RESPVersion,
        into buffer: inout ByteBuffer
    ) {
        buffer.writeInteger(marker.asciiValue!)
        buffer.writeString(String(elements.count))
        buffer.writeStaticString("\r\n")
        for element in elements { encode(element, version: version, into: &buffer) }
    }

    /// Writes a one-line reply; CR and LF inside it would break the framing, so they become spaces.
    private static func writeLine(_ text: String, into buffer: inout ByteBuffer) {
        if text.utf8.contains(where: { $0 == 13 || $0 == 10 }) {
            buffer.writeBytes(text.utf8.map { $0 == 13 || $0 == 10 ? UInt8(ascii: " ") : $0 })
        } else {
            buffer.writeString(text)
        }
        buffer.writeStaticString("\r\n")
    }
}
