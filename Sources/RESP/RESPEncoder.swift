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
        }
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
