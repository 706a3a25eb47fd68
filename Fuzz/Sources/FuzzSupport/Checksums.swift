import LZ4
import WAL

/// Rewrites the checksums of mutated file bytes, so that the fuzzers reach the decoding behind
/// them instead of stopping at the first checksum mismatch.
public enum Checksums {
    /// A segment with its header and record checksums made valid, walking records by their
    /// declared lengths as far as they fit.
    /// - Parameter bytes: segment bytes.
    /// - Returns: the bytes with valid checksums, or nil when there is no segment header to fix.
    public static func fixingSegment(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count >= WALFormat.segmentHeaderSize, bytes.starts(with: WALFormat.magic) else { return nil }
        var bytes = bytes
        store(masked(bytes, 0..<16), in: &bytes, at: 16)
        var offset = WALFormat.segmentHeaderSize
        while bytes.count - offset >= WALFormat.recordHeaderSize {
            let length = Int(load(bytes, at: offset + 4))
            let end = offset + WALFormat.recordHeaderSize + length
            guard end <= bytes.count else { break }
            store(masked(bytes, (offset + 4)..<end), in: &bytes, at: offset)
            offset = end
        }
        return bytes
    }

    /// A checkpoint with its header and block checksums made valid, walking blocks by their
    /// declared lengths as far as they fit.
    /// - Parameter bytes: checkpoint bytes.
    /// - Returns: the bytes with valid checksums, or nil when there is no checkpoint header to fix.
    public static func fixingCheckpoint(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count >= checkpointHeaderSize, isCheckpoint(bytes) else { return nil }
        var bytes = bytes
        store(masked(bytes, 0..<20), in: &bytes, at: 20)
        var offset = checkpointHeaderSize
        for _ in 0..<load(bytes, at: 16) {
            guard bytes.count - offset >= checkpointBlockHeaderSize else { break }
            let end = offset + checkpointBlockHeaderSize + Int(load(bytes, at: offset + 8))
            guard end <= bytes.count else { break }
            store(masked(bytes, (offset + 4)..<end), in: &bytes, at: offset)
            offset = end
        }
        return bytes
    }

    /// A valid checkpoint file at `lsn` whose body is `body`, in blocks as the writer makes them.
    /// - Parameters:
    ///   - body: the raw body (metadata, users, rooms).
    ///   - lsn: the header's lsn.
    ///   - blockSize: the raw size of one block.
    /// - Returns: the file's bytes.
    public static func checkpoint(body: [UInt8], lsn: UInt64 = 1, blockSize: Int = 4 << 20) -> [UInt8] {
        var blocks: [[UInt8]] = []
        var start = 0
        while start < body.count {
            let end = min(body.count, start + blockSize)
            let raw = Array(body[start..<end])
            let stored = try! LZ4Block.compress(raw)
            var block = [UInt8](repeating: 0, count: 4)
            append(UInt32(raw.count), to: &block)
            append(UInt32(stored.count), to: &block)
            block += stored
            store(masked(block, 4..<block.count), in: &block, at: 0)
            blocks.append(block)
            start = end
        }
        var file = checkpointMagic
        append(lsn, to: &file)
        append(UInt32(blocks.count), to: &file)
        append(masked(file, 0..<file.count), to: &file)
        for block in blocks { file += block }
        return file + Array("TNTDCKPE".utf8)
    }

    /// A catalog file (`catalog/tenants.bin`) around `body`, its length and checksum valid.
    public static func catalog(body: [UInt8]) -> [UInt8] {
        var file = Self.catalogMagic
        append(UInt64(body.count), to: &file)
        append(CRC32C.mask(CRC32C.checksum(body)), to: &file)
        return file + body
    }

    /// The catalog magic.
    public static let catalogMagic = Array("TNTDCAT1".utf8)

    /// The checkpoint magic of the format of earlier versions (the files `checkpoint(body:)` makes).
    public static let checkpointMagic = Array("TNTDCKP1".utf8)
    /// The checkpoint magic written now (blocks held to 64 times their stored size, maybe padded).
    public static let checkpointMagicVersion2 = Array("TNTDCKP2".utf8)

    /// Whether `bytes` start with either checkpoint magic.
    public static func isCheckpoint(_ bytes: [UInt8]) -> Bool {
        bytes.starts(with: checkpointMagic) || bytes.starts(with: checkpointMagicVersion2)
    }
    private static let checkpointHeaderSize = 24
    private static let checkpointBlockHeaderSize = 12

    private static func masked(_ bytes: [UInt8], _ range: Range<Int>) -> UInt32 {
        bytes.withUnsafeBytes { CRC32C.mask(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[range]))) }
    }

    private static func load(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    private static func store(_ value: UInt32, in bytes: inout [UInt8], at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<(offset + 4), with: $0) }
    }

    private static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}
