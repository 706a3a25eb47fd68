import LZ4
import WAL

/// Where a checkpoint's bytes come from: its file, read piece by piece, or bytes in memory.
protocol CheckpointSource {
    /// The file's size.
    var size: Int { get }
    /// `count` bytes at `offset` (the caller keeps within ``size``).
    func read(at offset: Int, count: Int) throws -> [UInt8]
}

/// A checkpoint in memory (fuzzing, tests, tools).
struct CheckpointBytes: CheckpointSource {
    let bytes: [UInt8]
    var size: Int { self.bytes.count }
    func read(at offset: Int, count: Int) throws -> [UInt8] { Array(self.bytes[offset..<(offset + count)]) }
}

/// A checkpoint file read through the file layer a block at a time: recovery never holds the
/// whole file, or the whole body, in memory.
final class CheckpointFile: CheckpointSource {
    let fileSystem: any WALFileSystem
    let path: String
    let size: Int
    private let fd: Int32

    init(path: String, fileSystem: any WALFileSystem) throws {
        self.fileSystem = fileSystem
        self.path = path
        self.fd = try fileSystem.openForReading(path)
        do {
            self.size = try fileSystem.fileSize(path)
        } catch {
            fileSystem.close(self.fd, path: path)
            throw error
        }
    }

    deinit { self.fileSystem.close(self.fd, path: self.path) }

    func read(at offset: Int, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = try bytes.withUnsafeMutableBytes { buffer in
                try self.fileSystem.read(
                    self.fd,
                    into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]),
                    at: offset + done,
                    path: self.path
                )
            }
            guard got > 0 else {
                throw WALError.corrupt(file: self.path, offset: offset + done, reason: "file ends early")
            }
            done += got
        }
        return bytes
    }
}

/// Reads a checkpoint's container: checks its header, finds its blocks (bounding the body they
/// add up to before anything is decompressed), then gives their raw bytes one at a time, each
/// checked against its checksum. Every problem is a ``WALError`` naming the file and offset.
struct CheckpointReader {
    let path: String
    let lsn: UInt64
    /// The body's size: the blocks' raw lengths added up.
    let bodySize: Int
    private let source: any CheckpointSource
    /// The file's format: 2 (blocks bounded, maybe padded) or 1.
    private let version: Int
    /// The next block's offset, and how many blocks are left (their headers were checked once, in
    /// `init`, without keeping a table: a crafted file of many tiny blocks costs no memory).
    private var nextOffset = Checkpoint.headerSize
    private var blocksLeft: Int

    init(source: any CheckpointSource, path: String) throws {
        self.source = source
        self.path = path
        func corrupt(_ offset: Int, _ reason: String) -> WALError {
            WALError.corrupt(file: path, offset: offset, reason: reason)
        }
        let size = source.size
        guard size >= Checkpoint.headerSize + Checkpoint.trailer.count else { throw corrupt(0, "not a checkpoint") }
        let header = try source.read(at: 0, count: Checkpoint.headerSize)
        let version: Int
        if header.prefix(8).elementsEqual(Checkpoint.magic) {
            version = 2
        } else if header.prefix(8).elementsEqual(Checkpoint.magicVersion1) {
            version = 1
        } else {
            throw corrupt(0, "not a checkpoint")
        }
        self.version = version
        guard
            CRC32C.unmask(header.littleEndian(UInt32.self, at: 20))
                == header[0..<20].withUnsafeBytes({ CRC32C.checksum($0) })
        else {
            throw corrupt(0, "bad checkpoint header checksum")
        }
        let lsn = header.littleEndian(UInt64.self, at: 8)
        guard lsn <= WALFormat.maxLSN else { throw corrupt(8, "checkpoint lsn \(lsn) out of range") }
        self.lsn = lsn
        let declared = header.littleEndian(UInt32.self, at: 16)
        // A streamed checkpoint's blocks run up to the trailer.
        let blockCount = declared == Checkpoint.unknownBlockCount ? nil : Int(declared)
        // lz4 expands up to 255 times: a crafted file of a few KB could otherwise ask for
        // gigabytes. A body is at most 64 times its file: version 2 holds each block to that
        // (the writer pads the ones lz4 packs tighter); a version-1 file, written before, is held
        // to it as a whole, unless TENANTD_LEGACY_CHECKPOINT_BOUND=1 gives it its earlier bound
        // (at least 256 MiB) to read a pre-upgrade checkpoint that packed tighter.
        let bound = size.multipliedReportingOverflow(by: Checkpoint.maxExpansion).partialValue
        let maxBody = version < 2 && Checkpoint.legacyBound ? max(Checkpoint.minimumBodyBound, bound) : bound
        let maxStored = LZ4Block.compressBound(Checkpoint.blockSize)
        var offset = Checkpoint.headerSize
        var body = 0
        var blocks = 0
        while blockCount.map({ blocks < $0 }) ?? (size - offset != Checkpoint.trailer.count) {
            guard size - offset >= Checkpoint.blockHeaderSize else { throw corrupt(offset, "truncated block") }
            let blockHeader = try source.read(at: offset, count: Checkpoint.blockHeaderSize)
            let rawField = blockHeader.littleEndian(UInt32.self, at: 4)
            let padded = version >= 2 && rawField & Checkpoint.paddedFlag != 0
            let raw = Int(version >= 2 ? rawField & ~Checkpoint.paddedFlag : rawField)
            let stored = Int(blockHeader.littleEndian(UInt32.self, at: 8))
            guard raw <= Checkpoint.blockSize, stored <= maxStored + raw / Checkpoint.maxExpansion + 4,
                size - offset - Checkpoint.blockHeaderSize >= stored, !padded || stored >= 4
            else { throw corrupt(offset, "block size out of bounds") }
            guard version < 2 || raw <= stored * Checkpoint.maxExpansion else {
                throw corrupt(offset, "block expands over \(Checkpoint.maxExpansion) times its stored size")
            }
            guard maxBody - body >= raw else {
                throw corrupt(
                    offset,
                    "body over \(maxBody) bytes, \(Checkpoint.maxExpansion) times the file"
                        + (version < 2 && !Checkpoint.legacyBound
                            ? " (a checkpoint of an earlier version: TENANTD_LEGACY_CHECKPOINT_BOUND=1 reads it)" : "")
                )
            }
            blocks += 1
            body += raw
            offset += Checkpoint.blockHeaderSize + stored
        }
        guard size - offset == Checkpoint.trailer.count,
            try source.read(at: offset, count: Checkpoint.trailer.count) == Checkpoint.trailer
        else { throw corrupt(offset, "missing checkpoint trailer") }
        self.blocksLeft = blocks
        self.bodySize = body
    }

    /// The next block's raw bytes, nil after the last.
    mutating func nextBlock() throws -> [UInt8]? {
        guard self.blocksLeft > 0 else { return nil }
        self.blocksLeft -= 1
        let offset = self.nextOffset
        // Bounds checked in `init`; read again here (the source does not change under a reader).
        let header = try self.source.read(at: offset, count: Checkpoint.blockHeaderSize)
        let rawField = header.littleEndian(UInt32.self, at: 4)
        let padded = self.version >= 2 && rawField & Checkpoint.paddedFlag != 0
        let raw = Int(self.version >= 2 ? rawField & ~Checkpoint.paddedFlag : rawField)
        let stored = Int(header.littleEndian(UInt32.self, at: 8))
        let bytes = header + (try self.source.read(at: offset + Checkpoint.blockHeaderSize, count: stored))
        self.nextOffset = offset + Checkpoint.blockHeaderSize + stored
        let crc = bytes[4...].withUnsafeBytes { CRC32C.checksum($0) }
        guard CRC32C.unmask(bytes.littleEndian(UInt32.self, at: 0)) == crc else {
            throw WALError.corrupt(file: self.path, offset: offset, reason: "block checksum mismatch")
        }
        var compressed = Array(bytes[Checkpoint.blockHeaderSize...])
        if padded {
            // The lz4 bytes, then zeros, then their length.
            let length = Int(bytes.littleEndian(UInt32.self, at: bytes.count - 4))
            guard length <= compressed.count - 4 else {
                throw WALError.corrupt(file: self.path, offset: offset, reason: "padded block length out of bounds")
            }
            compressed.removeLast(compressed.count - length)
        }
        do {
            return try LZ4Block.decompress(
                compressed,
                decodedSize: raw,
                maxDecodedSize: Checkpoint.blockSize
            )
        } catch {
            throw WALError.corrupt(file: self.path, offset: offset, reason: "\(error)")
        }
    }

    /// The whole body (a shared checkpoint's tools and tests; recovery streams it).
    mutating func body() throws -> [UInt8] {
        var body: [UInt8] = []
        body.reserveCapacity(self.bodySize)
        while let block = try self.nextBlock() { body += block }
        return body
    }
}

/// What the body decoders read with: ``BinaryReader`` over bytes in memory, or ``BodyStream``
/// over a checkpoint's blocks as they come.
protocol BodyReading {
    mutating func read<T: FixedWidthInteger>(_ type: T.Type) throws -> T
    mutating func readString() throws -> String
    mutating func readBytes() throws -> [UInt8]
    mutating func readVarint() throws -> UInt64
    mutating func readString(count: Int) throws -> String
    mutating func readCount(minimumSize: Int, _ what: String) throws -> Int
    /// Passes over `count` bytes without keeping them.
    mutating func skip(_ count: Int) throws
    /// The bytes read so far.
    var position: Int { get }
    var isAtEnd: Bool { get }
}

extension BodyReading {
    /// A signed varint, zigzag-encoded.
    mutating func readSignedVarint() throws -> Int64 {
        let raw = try self.readVarint()
        return Int64(bitPattern: raw >> 1) ^ -Int64(bitPattern: raw & 1)
    }
}

extension BinaryReader: BodyReading {
    var position: Int { self.offset }
}

/// A checkpoint body read block by block: it holds the unread part of a block or two, never the
/// whole body. Counts are bounded by the body's size, known from the blocks' headers.
struct BodyStream: BodyReading {
    private var reader: CheckpointReader
    private var window: [UInt8] = []
    private var windowOffset = 0
    /// The body bytes before the window.
    private var consumed = 0

    init(_ reader: CheckpointReader) {
        self.reader = reader
    }

    var position: Int { self.consumed + self.windowOffset }
    private var remaining: Int { self.reader.bodySize - self.position }
    var isAtEnd: Bool { self.remaining == 0 }

    /// Makes `count` bytes readable in the window.
    private mutating func ensure(_ count: Int) throws {
        guard self.window.count - self.windowOffset < count else { return }
        guard count <= self.remaining else { throw RecordDecodingError.truncated }
        self.window.removeFirst(self.windowOffset)
        self.consumed += self.windowOffset
        self.windowOffset = 0
        while self.window.count < count {
            guard let block = try self.reader.nextBlock() else { throw RecordDecodingError.truncated }
            self.window += block
        }
    }

    private mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        try self.ensure(count)
        defer { self.windowOffset += count }
        return self.window[self.windowOffset..<(self.windowOffset + count)]
    }

    mutating func read<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        let bytes = try self.take(MemoryLayout<T>.size)
        return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    mutating func readString() throws -> String {
        try self.readString(count: Int(try self.read(UInt32.self)))
    }

    mutating func readBytes() throws -> [UInt8] {
        Array(try self.take(Int(try self.read(UInt32.self))))
    }

    mutating func readVarint() throws -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard shift < 64 else { throw RecordDecodingError.truncated }
            let byte = try self.take(1).first!
            value |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return value }
            shift += 7
        }
    }

    mutating func readString(count: Int) throws -> String {
        guard count >= 0 else { throw RecordDecodingError.truncated }
        let bytes = try self.take(count)
        guard let string = bytes.withUnsafeBytes({ String(validating: $0, as: UTF8.self) }) else {
            throw RecordDecodingError.invalidUTF8
        }
        return string
    }

    mutating func readCount(minimumSize: Int, _ what: String) throws -> Int {
        let raw = try self.readVarint()
        guard let count = Int(exactly: raw), count <= self.remaining / minimumSize else {
            throw RecordDecodingError.invalidValue(what)
        }
        return count
    }

    mutating func skip(_ count: Int) throws {
        guard count >= 0, count <= self.remaining else { throw RecordDecodingError.truncated }
        var left = count
        while true {
            let available = self.window.count - self.windowOffset
            if left <= available {
                self.windowOffset += left
                return
            }
            left -= available
            // The whole window is passed: the next block starts a new one.
            self.consumed += self.window.count
            self.window = []
            self.windowOffset = 0
            guard let block = try self.reader.nextBlock() else { throw RecordDecodingError.truncated }
            self.window = block
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate func littleEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        self.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
