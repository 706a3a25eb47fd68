import Foundation
import LZ4
import WAL

/// A tenant's whole state at one lsn, compacted: what recovery loads before it replays the
/// segments after that lsn.
///
/// File (`checkpoint/<lsn, 20 digits>.ckpt`), integers little-endian:
/// `magic "TNTDCKP1" (8) | lsn (8) | block count (4, or 0xFFFFFFFF when the blocks run up to the
/// trailer, as a checkpoint streamed to its file writes it) | masked crc32c of the 20 bytes before (4)`,
/// then each block `masked crc32c of the next three fields (4) | raw length (4) | stored length (4) |
/// lz4hc-compressed bytes`, then `"TNTDCKPE"` (8). The blocks' raw bytes, joined, are the body:
/// metadata (JSON), users, then each room column by column (timestamps as deltas, authors as
/// indexes into the room's author table, text lengths, then the texts back to back), so the texts
/// of a room compress against each other in large blocks.
enum Checkpoint {
    /// The format written: every block within ``maxExpansion`` of its stored size (padded when
    /// lz4 packs it tighter), so that a file's body is at most that multiple of the file.
    static let magic = Array("TNTDCKP2".utf8)
    /// The format of earlier versions, still read, with its earlier bound on the body.
    static let magicVersion1 = Array("TNTDCKP1".utf8)
    /// In a version-2 block's raw length: the stored bytes end with padding and, last, the
    /// lz4 length (u32).
    static let paddedFlag: UInt32 = 1 << 31
    static let trailer = Array("TNTDCKPE".utf8)
    static let headerSize = 24
    static let blockHeaderSize = 12
    /// The raw size of one block.
    static let blockSize = 4 << 20
    static let fileExtension = ".ckpt"
    /// The most a block's raw bytes may be for each stored byte (version 2: each block; version
    /// 1: the whole body, with at least ``minimumBodyBound`` allowed).
    static let maxExpansion = 64
    /// The earlier bound of a version-1 body, taken only with `TENANTD_LEGACY_CHECKPOINT_BOUND=1`.
    static let minimumBodyBound = 256 << 20
    /// Whether version-1 files get their earlier bound (an operator's escape hatch for a
    /// pre-upgrade checkpoint that lz4 packed tighter than 64 to 1; the next checkpoint is
    /// version 2).
    static let legacyBound: Bool = {
        guard let value = getenv("TENANTD_LEGACY_CHECKPOINT_BOUND") else { return false }
        return String(cString: value) == "1"
    }()

    static func fileName(lsn: UInt64) -> String {
        WALFormat.segmentName(firstLSN: lsn).replacingOccurrences(of: WALFormat.segmentExtension, with: fileExtension)
    }

    static func lsn(ofFileNamed name: String) -> UInt64? {
        guard name.hasSuffix(fileExtension) else { return nil }
        return WALFormat.firstLSN(
            ofSegmentNamed: String(name.dropLast(fileExtension.count)) + WALFormat.segmentExtension
        )
    }

    // MARK: - Encoding

    /// The file bytes of `state` at `lsn`.
    static func encode(_ state: TenantState, lsn: UInt64) throws -> [UInt8] {
        var file: [UInt8] = []
        try self.write(state, lsn: lsn) { file += $0 }
        return file
    }

    /// The raw size of the blocks a streamed checkpoint is written in.
    static let streamBlockSize = 1 << 20
    /// The block count of a header written before its blocks: they run up to the trailer.
    static let unknownBlockCount = UInt32.max

    /// Writes the checkpoint file of `state` at `lsn` to `output` a block at a time, so that it
    /// takes a block or two of memory whatever the state's size (cold chunks are read back one by
    /// one). Its header leaves the block count open (``unknownBlockCount``): the blocks run up to
    /// the trailer.
    /// - Returns: the file's size.
    @discardableResult
    static func write(_ state: TenantState, lsn: UInt64, to output: ([UInt8]) throws -> Void) throws -> Int {
        var header = Self.magic
        header.appendLE(lsn)
        header.appendLE(Self.unknownBlockCount)
        header.appendLE(CRC32C.mask(CRC32C.checksum(header)))
        try output(header)
        var size = header.count
        var writer = BinaryWriter(capacity: Self.streamBlockSize * 2)
        func emit(_ raw: ArraySlice<UInt8>) throws {
            let block = try Self.block(Array(raw))
            try output(block)
            size += block.count
        }
        try Self.writeBody(state, into: &writer) { writer in
            guard writer.bytes.count >= Self.streamBlockSize else { return }
            var offset = 0
            while writer.bytes.count - offset >= Self.streamBlockSize {
                try emit(writer.bytes[offset..<(offset + Self.streamBlockSize)])
                offset += Self.streamBlockSize
            }
            writer.bytes.removeFirst(offset)
        }
        if !writer.bytes.isEmpty { try emit(writer.bytes[...]) }
        try output(Self.trailer)
        return size + Self.trailer.count
    }

    /// One block: its checksum, raw and stored lengths, then `raw` lz4hc-compressed. A block
    /// that lz4 packs more than ``maxExpansion`` times is padded (zeros, then the lz4 length) up
    /// to a stored size that keeps it within: the reader's bound never refuses what was written.
    private static func block(_ raw: [UInt8], version: Int = 2) throws -> [UInt8] {
        var stored = try LZ4Block.compressHC(raw, level: 12)
        var rawField = UInt32(raw.count)
        if version >= 2 && raw.count > stored.count * Self.maxExpansion {
            let compressed = stored.count
            let padded = (raw.count + Self.maxExpansion - 1) / Self.maxExpansion
            stored += [UInt8](repeating: 0, count: max(0, padded - compressed - 4))
            stored.appendLE(UInt32(compressed))
            rawField |= Self.paddedFlag
            assert(raw.count <= stored.count * Self.maxExpansion, "a padded block is within the bound")
        }
        var block = [UInt8]()
        block.reserveCapacity(Self.blockHeaderSize + stored.count)
        block.appendLE(UInt32(0))
        block.appendLE(rawField)
        block.appendLE(UInt32(stored.count))
        block += stored
        let crc = block.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[4...])) }
        block.replaceSubrange(0..<4, with: withUnsafeBytes(of: CRC32C.mask(crc).littleEndian) { Array($0) })
        return block
    }

    /// The file bytes of a body at `lsn`: header, checksummed compressed blocks, trailer.
    /// - Parameter version: 2, or 1 for the format of earlier versions (tests of reading it).
    static func encode(body: [UInt8], lsn: UInt64, version: Int = 2) throws -> [UInt8] {
        var blocks: [[UInt8]] = []
        var offset = 0
        while offset < body.count {
            let end = min(body.count, offset + Self.blockSize)
            blocks.append(try Self.block(Array(body[offset..<end]), version: version))
            offset = end
        }
        var file = version >= 2 ? Self.magic : Self.magicVersion1
        file.appendLE(lsn)
        file.appendLE(UInt32(blocks.count))
        file.appendLE(CRC32C.mask(CRC32C.checksum(file)))
        for block in blocks { file += block }
        file += Self.trailer
        return file
    }

    /// The uncompressed body of one tenant's state, in memory.
    static func body(_ state: TenantState) throws -> [UInt8] {
        var writer = BinaryWriter(capacity: 1 << 16)
        try Self.writeBody(state, into: &writer) { _ in }
        return writer.bytes
    }

    /// Writes the uncompressed body of one tenant's state into `writer`, calling `flush` whenever
    /// a piece is done, so that a streaming caller can take the bytes written so far.
    /// - Throws: when a cold chunk cannot be read back, or what `flush` throws.
    static func writeBody(
        _ state: TenantState,
        into writer: inout BinaryWriter,
        flush: (inout BinaryWriter) throws -> Void
    ) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        writer.write(bytes: state.metadata.map { (try? encoder.encode($0)).map(Array.init) ?? [] } ?? [])
        writer.writeVarint(UInt64(state.users.count))
        for user in state.users.values.sorted(by: { $0.name < $1.name }) {
            writer.write(user.name)
            writer.write(user.role.rawValue)
            writer.write(bytes: user.tokenHash)
            writer.write(user.joinedAt)
        }
        try flush(&writer)
        writer.writeVarint(UInt64(state.rooms.count))
        for (name, room) in state.rooms.sorted(by: { $0.key < $1.key }) {
            // The room's applied messages, then those still waiting for the log (seqs go on),
            // read chunk by chunk from the room's columns: a large room is neither copied nor
            // made into `Message` values, and its cold chunks are read back one at a time.
            let pending = state.pending[name] ?? []
            writer.write(name)
            writer.writeVarint(UInt64(room.count + pending.count))
            // The room's authors are in order of first appearance; the pending add theirs after.
            var authors = room.authors
            var known = Set(authors)
            for message in pending where known.insert(message.user).inserted { authors.append(message.user) }
            writer.writeVarint(UInt64(authors.count))
            for author in authors { writer.write(author) }
            let index = Dictionary(uniqueKeysWithValues: authors.enumerated().map { ($1, $0) })
            var previous: Int64 = 0
            try room.forEachChunk { chunk in
                for timestamp in chunk.timestamps {
                    writer.writeSignedVarint(timestamp &- previous)
                    previous = timestamp
                }
                try flush(&writer)
            }
            for message in pending {
                writer.writeSignedVarint(message.timestamp &- previous)
                previous = message.timestamp
            }
            try room.forEachChunk { chunk in
                for author in chunk.authorOf { writer.writeVarint(UInt64(author)) }
                try flush(&writer)
            }
            for message in pending { writer.writeVarint(UInt64(index[message.user]!)) }
            try room.forEachChunk { chunk in
                var start: UInt32 = 0
                for end in chunk.ends {
                    writer.writeVarint(UInt64(end - start))
                    start = end
                }
                try flush(&writer)
            }
            for message in pending { writer.writeVarint(UInt64(message.text.utf8.count)) }
            try room.forEachChunk { chunk in
                writer.bytes.append(contentsOf: chunk.texts)
                try flush(&writer)
            }
            for message in pending {
                var text = message.text
                text.withUTF8 { writer.bytes.append(contentsOf: $0) }
            }
            try flush(&writer)
        }
    }

    // MARK: - Decoding

    /// - Parameter cold: where the rooms decoded move their sealed chunks under the memory budget.
    static func decode(bytes: [UInt8], path: String, cold: ColdStore? = nil) throws -> (TenantState, UInt64) {
        try self.decode(source: CheckpointBytes(bytes: bytes), path: path, cold: cold)
    }

    /// Decodes a checkpoint read block by block from `source`: the whole file or body is never in
    /// memory, and the rooms move their chunks out under the budget as they load.
    static func decode(
        source: any CheckpointSource,
        path: String,
        cold: ColdStore? = nil
    ) throws -> (TenantState, UInt64) {
        let reader = try CheckpointReader(source: source, path: path)
        var stream = BodyStream(reader)
        do {
            let state = try Self.state(reading: &stream, cold: cold)
            guard stream.isAtEnd else { throw RecordDecodingError.trailingBytes }
            return (state, reader.lsn)
        } catch let error as WALError {
            throw error
        } catch {
            throw WALError.corrupt(
                file: path,
                offset: Self.headerSize,
                reason: "checkpoint body does not decode: \(error)"
            )
        }
    }

    /// Checks the header, blocks and trailer of a checkpoint file's bytes.
    /// - Returns: the body, decompressed, and the lsn.
    /// - Throws: ``WALError`` naming the file and offset of the first damage.
    static func container(bytes: [UInt8], path: String) throws -> (body: [UInt8], lsn: UInt64) {
        var reader = try CheckpointReader(source: CheckpointBytes(bytes: bytes), path: path)
        return (try reader.body(), reader.lsn)
    }

    /// The fewest body bytes one user takes: three empty length-prefixed fields and `joinedAt`.
    private static let minimumUserSize = 4 + 4 + 4 + 8
    /// The fewest body bytes one room takes: an empty name and two zero counts.
    private static let minimumRoomSize = 4 + 1 + 1
    /// The fewest body bytes one message takes: a one-byte delta, author index and length.
    private static let minimumMessageSize = 3

    /// Decodes a checkpoint body. Every count is checked against the bytes left before it sizes
    /// or drives anything, and every sum of numbers read is checked for overflow: a body is
    /// checksummed, but a copied or crafted file is still input from outside.
    static func state(from body: UnsafeRawBufferPointer, cold: ColdStore? = nil) throws -> TenantState {
        var reader = BinaryReader(body)
        let state = try Self.state(reading: &reader, cold: cold)
        guard reader.isAtEnd else { throw RecordDecodingError.trailingBytes }
        return state
    }

    /// Decodes one tenant's state from `reader`, leaving it after the state's last byte.
    static func state<Reader: BodyReading>(reading reader: inout Reader, cold: ColdStore?) throws -> TenantState {
        var state = TenantState()
        state.cold = cold
        let metadata = try reader.readBytes()
        if !metadata.isEmpty {
            state.metadata = try JSONDecoder().decode(TenantMetadata.self, from: Data(metadata))
        }
        let userCount = try reader.readCount(minimumSize: Self.minimumUserSize, "user count")
        for _ in 0..<userCount {
            let name = try reader.readString()
            guard let role = Role(rawValue: try reader.readString()) else {
                throw RecordDecodingError.invalidValue("role")
            }
            let hash = try reader.readBytes()
            guard hash.count == Tokens.hashSize else { throw RecordDecodingError.invalidValue("token hash") }
            try state.apply(
                .userPut(User(name: name, role: role, tokenHash: hash, joinedAt: try reader.read(Int64.self)))
            )
        }
        let roomCount = try reader.readCount(minimumSize: Self.minimumRoomSize, "room count")
        for _ in 0..<roomCount {
            let room = try reader.readString()
            let count = try reader.readCount(minimumSize: Self.minimumMessageSize, "message count")
            let authorCount = try reader.readCount(minimumSize: 4, "author count")
            guard authorCount <= max(count, 1) else { throw RecordDecodingError.invalidValue("author count") }
            var authors: [String] = []
            authors.reserveCapacity(authorCount)
            for _ in 0..<authorCount { authors.append(try reader.readString()) }
            // The room's columns (timestamps, authors, lengths, texts) are read side by side by
            // four cursors over the body, so that decoding holds a few blocks, never a column:
            // a crafted count costs time in proportion to the file, not memory.
            var timestampCursor = reader
            for _ in 0..<count { _ = try reader.readVarint() }
            var authorCursor = reader
            for _ in 0..<count { _ = try reader.readVarint() }
            var lengthCursor = reader
            var textBytes = 0
            for _ in 0..<count {
                let (sum, overflow) = textBytes.addingReportingOverflow(
                    try reader.readCount(minimumSize: 1, "text length")
                )
                guard !overflow else { throw RecordDecodingError.invalidValue("text length") }
                textBytes = sum
            }
            var textCursor = reader
            try reader.skip(textBytes)
            var previous: Int64 = 0
            for index in 0..<count {
                let (sum, overflow) = previous.addingReportingOverflow(try timestampCursor.readSignedVarint())
                guard !overflow else { throw RecordDecodingError.invalidValue("timestamp") }
                previous = sum
                let author = try authorCursor.readVarint()
                guard author < UInt64(authors.count) else { throw RecordDecodingError.invalidValue("author index") }
                // Checked in the pass above: every length fits.
                guard let length = Int(exactly: try lengthCursor.readVarint()) else {
                    throw RecordDecodingError.invalidValue("text length")
                }
                let text = try textCursor.readString(count: length)
                let message = Message(
                    seq: UInt64(index + 1),
                    timestamp: previous,
                    user: authors[Int(author)],
                    text: text
                )
                try state.apply(.message(room: room, message))
            }
        }
        return state
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { self.append(contentsOf: $0) }
    }
}
