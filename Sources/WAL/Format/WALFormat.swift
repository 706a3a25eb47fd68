/// The byte layout of segment files and records. All integers are little-endian.
///
/// Segment header (20 bytes): `magic "TNTDWAL1" (8) | first lsn (8) | masked crc32c of the 16 bytes before (4)`.
///
/// Record (21-byte header, then the payload as stored):
/// `masked crc32c (4) | stored length (4) | type (1) | lsn (8) | uncompressed length (4) | payload`;
/// the CRC covers every byte after it, the stored (lz4-compressed) payload included.
public enum WALFormat {
    /// The segment magic.
    public static let magic: [UInt8] = Array("TNTDWAL1".utf8)
    /// The size of a segment header.
    public static let segmentHeaderSize = 20
    /// The size of a record header.
    public static let recordHeaderSize = 21
    /// The largest lsn a log may hold: every lsn read from disk is checked against it, so the
    /// lsn after it never overflows.
    public static let maxLSN = UInt64(Int64.max)
    /// The file name extension of segments.
    public static let segmentExtension = ".wal"

    /// The name of the segment whose first record has `lsn`: 20 zero-padded digits, so names sort by lsn.
    public static func segmentName(firstLSN lsn: UInt64) -> String {
        let digits = String(lsn)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits + segmentExtension
    }

    /// The first lsn a segment name stands for, or nil when it is not a segment's name.
    public static func firstLSN(ofSegmentNamed name: String) -> UInt64? {
        guard name.hasSuffix(segmentExtension) else { return nil }
        let stem = name.dropLast(segmentExtension.count)
        guard stem.count == 20, stem.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(stem)
    }

    /// The bytes of a segment header.
    public static func segmentHeader(firstLSN: UInt64) -> [UInt8] {
        var bytes = magic
        bytes.appendLittleEndian(firstLSN)
        bytes.appendLittleEndian(CRC32C.mask(CRC32C.checksum(bytes)))
        return bytes
    }

    /// Parses a segment header, or nil when it is damaged.
    public static func parseSegmentHeader(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
        guard bytes.count >= segmentHeaderSize else { return nil }
        guard bytes.prefix(8).elementsEqual(magic) else { return nil }
        let stored = bytes.loadLE(UInt32.self, at: 16)
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<16]))
        guard CRC32C.unmask(stored) == crc else { return nil }
        return bytes.loadLE(UInt64.self, at: 8)
    }

    /// Whether the record at `start` of `bytes` has the header a reader accepts for these
    /// fields: its stored length within the bytes, its type, lsn and size, and a checksum that
    /// matches (the writer's check of what it framed, in debug builds).
    static func recordHeaderIsValid(_ bytes: [UInt8], at start: Int, type: UInt8, lsn: UInt64, payloadSize: Int) -> Bool
    {
        guard start >= 0, bytes.count - start >= Self.recordHeaderSize else { return false }
        return bytes.withUnsafeBytes { raw in
            let stored = Int(raw.loadLE(UInt32.self, at: start + 4))
            guard stored == bytes.count - start - Self.recordHeaderSize, raw[start + 8] == type,
                raw.loadLE(UInt64.self, at: start + 9) == lsn,
                Int(raw.loadLE(UInt32.self, at: start + 17)) == payloadSize
            else { return false }
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[(start + 4)...]))
            return raw.loadLE(UInt32.self, at: start) == CRC32C.mask(crc)
        }
    }

    /// The largest stored payload a record of `maxRecordSize` uncompressed bytes can have.
    public static func maxStoredSize(forRecordSize maxRecordSize: Int) -> Int {
        maxRecordSize + maxRecordSize / 255 + 16
    }
}

extension Array where Element == UInt8 {
    @inlinable
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { self.append(contentsOf: $0) }
    }

    @inlinable
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { source in
            for index in 0..<source.count { self[offset + index] = source[index] }
        }
    }
}

extension UnsafeRawBufferPointer {
    @inlinable
    func loadLE<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        T(littleEndian: self.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
