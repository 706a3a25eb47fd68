/// Appends little-endian integers and length-prefixed strings to a byte array.
struct BinaryWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 64) {
        self.bytes.reserveCapacity(capacity)
    }

    mutating func write<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { self.bytes.append(contentsOf: $0) }
    }

    mutating func write(_ string: String) {
        var string = string
        string.withUTF8 { utf8 in
            self.write(UInt32(utf8.count))
            self.bytes.append(contentsOf: utf8)
        }
    }

    /// An unsigned LEB128 varint.
    mutating func writeVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            self.bytes.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        self.bytes.append(UInt8(value))
    }

    /// A signed varint, zigzag-encoded.
    mutating func writeSignedVarint(_ value: Int64) {
        self.writeVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    mutating func write(bytes: [UInt8]) {
        self.write(UInt32(bytes.count))
        self.bytes.append(contentsOf: bytes)
    }
}

/// Reads what ``BinaryWriter`` wrote, checking every length against what is left before copying.
struct BinaryReader {
    let buffer: UnsafeRawBufferPointer
    var offset = 0

    init(_ buffer: UnsafeRawBufferPointer) {
        self.buffer = buffer
    }

    mutating func read<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        let size = MemoryLayout<T>.size
        guard self.buffer.count - self.offset >= size else { throw RecordDecodingError.truncated }
        defer { self.offset += size }
        return T(littleEndian: self.buffer.loadUnaligned(fromByteOffset: self.offset, as: T.self))
    }

    mutating func readString() throws -> String {
        let count = Int(try self.read(UInt32.self))
        guard self.buffer.count - self.offset >= count else { throw RecordDecodingError.truncated }
        defer { self.offset += count }
        let slice = UnsafeRawBufferPointer(rebasing: self.buffer[self.offset..<(self.offset + count)])
        guard let string = String(validating: slice, as: UTF8.self) else { throw RecordDecodingError.invalidUTF8 }
        return string
    }

    mutating func readBytes() throws -> [UInt8] {
        let count = Int(try self.read(UInt32.self))
        guard self.buffer.count - self.offset >= count else { throw RecordDecodingError.truncated }
        defer { self.offset += count }
        return Array(self.buffer[self.offset..<(self.offset + count)])
    }

    mutating func readVarint() throws -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard self.offset < self.buffer.count, shift < 64 else { throw RecordDecodingError.truncated }
            let byte = self.buffer[self.offset]
            self.offset += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return value }
            shift += 7
        }
    }

    /// `count` raw bytes as a string, checked to be UTF-8.
    mutating func readString(count: Int) throws -> String {
        guard count >= 0, self.buffer.count - self.offset >= count else { throw RecordDecodingError.truncated }
        defer { self.offset += count }
        let slice = UnsafeRawBufferPointer(rebasing: self.buffer[self.offset..<(self.offset + count)])
        guard let string = String(validating: slice, as: UTF8.self) else { throw RecordDecodingError.invalidUTF8 }
        return string
    }

    /// A varint count of items that each take at least `minimumSize` bytes, checked against the
    /// bytes left before anything is sized by it.
    /// - Throws: ``RecordDecodingError/invalidValue(_:)`` naming `what` when that many items cannot fit.
    mutating func readCount(minimumSize: Int, _ what: String) throws -> Int {
        let raw = try self.readVarint()
        guard let count = Int(exactly: raw), count <= (self.buffer.count - self.offset) / minimumSize else {
            throw RecordDecodingError.invalidValue(what)
        }
        return count
    }

    /// Passes over `count` bytes.
    mutating func skip(_ count: Int) throws {
        guard count >= 0, self.buffer.count - self.offset >= count else { throw RecordDecodingError.truncated }
        self.offset += count
    }

    var isAtEnd: Bool { self.offset == self.buffer.count }
}

/// A record's payload does not decode.
enum RecordDecodingError: Error, CustomStringConvertible {
    case truncated
    case invalidUTF8
    case unknownType(UInt8)
    case trailingBytes
    case invalidValue(String)

    var description: String {
        switch self {
        case .truncated: return "record payload is truncated"
        case .invalidUTF8: return "record holds invalid UTF-8"
        case .unknownType(let type): return "unknown record type \(type)"
        case .trailingBytes: return "record payload has trailing bytes"
        case .invalidValue(let what): return "record holds an invalid value: \(what)"
        }
    }
}
