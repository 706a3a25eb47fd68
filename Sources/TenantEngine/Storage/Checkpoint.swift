import Foundation
import LZ4
import WAL

/// A tenant's whole state at one lsn, compacted: what recovery loads before it replays the
/// segments after that lsn.
///
/// File (`checkpoint/<lsn, 20 digits>.ckpt`), integers little-endian:
/// `magic "TNTDCKP1" (8) | lsn (8) | block count (4) | masked crc32c of the 20 bytes before (4)`,
/// then each block `masked crc32c of the next three fields (4) | raw length (4) | stored length (4) |
/// lz4hc-compressed bytes`, then `"TNTDCKPE"` (8). The blocks' raw bytes, joined, are the body:
/// metadata (JSON), users, then each room column by column (timestamps as deltas, authors as
/// indexes into the room's author table, text lengths, then the texts back to back), so the texts
/// of a room compress against each other in large blocks.
enum Checkpoint {
    static let magic = Array("TNTDCKP1".utf8)
    static let trailer = Array("TNTDCKPE".utf8)
    static let headerSize = 24
    static let blockHeaderSize = 12
    /// The raw size of one block.
    static let blockSize = 4 << 20
    static let fileExtension = ".ckpt"
    /// The most a checkpoint's body may expand its file by, and the body any file may have.
    static let maxExpansion = 64
    static let minimumBodyBound = 256 << 20

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
        try self.encode(body: Self.body(state), lsn: lsn)
    }

    /// The file bytes of a body at `lsn`: header, checksummed compressed blocks, trailer.
    static func encode(body: [UInt8], lsn: UInt64) throws -> [UInt8] {
        var blocks: [[UInt8]] = []
        var offset = 0
        while offset < body.count {
            let end = min(body.count, offset + Self.blockSize)
            let raw = Array(body[offset..<end])
            let stored = try LZ4Block.compressHC(raw, level: 12)
            var block = [UInt8]()
            block.reserveCapacity(Self.blockHeaderSize + stored.count)
            block.appendLE(UInt32(0))
            block.appendLE(UInt32(raw.count))
            block.appendLE(UInt32(stored.count))
            block += stored
            let crc = block.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[4...])) }
            block.replaceSubrange(0..<4, with: withUnsafeBytes(of: CRC32C.mask(crc).littleEndian) { Array($0) })
            blocks.append(block)
            offset = end
        }
        var file = Self.magic
        file.appendLE(lsn)
        file.appendLE(UInt32(blocks.count))
        file.appendLE(CRC32C.mask(CRC32C.checksum(file)))
        for block in blocks { file += block }
        file += Self.trailer
        return file
    }

    /// The uncompressed body of one tenant's state.
    static func body(_ state: TenantState) -> [UInt8] {
        var writer = BinaryWriter(capacity: 1 << 16)
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
        writer.writeVarint(UInt64(state.rooms.count))
        for (name, room) in state.rooms.sorted(by: { $0.key < $1.key }) {
            // The room's applied messages, then those still waiting for the log (seqs go on),
            // read in place from the room's columns: a large room is neither copied nor made
            // into `Message` values.
            let pending = state.pending[name] ?? []
            let applied = room.count
            let count = applied + pending.count
            func author(_ index: Int) -> String {
                index < applied ? room.author(at: index) : pending[index - applied].user
            }
            writer.write(name)
            writer.writeVarint(UInt64(count))
            var authors: [String: Int] = [:]
            var authorList: [String] = []
            for index in 0..<count {
                let user = author(index)
                if authors[user] == nil {
                    authors[user] = authorList.count
                    authorList.append(user)
                }
            }
            writer.writeVarint(UInt64(authorList.count))
            for author in authorList { writer.write(author) }
            var previous: Int64 = 0
            for index in 0..<count {
                let timestamp = index < applied ? room.timestamp(at: index) : pending[index - applied].timestamp
                writer.writeSignedVarint(timestamp - previous)
                previous = timestamp
            }
            for index in 0..<count { writer.writeVarint(UInt64(authors[author(index)]!)) }
            for index in 0..<applied { writer.writeVarint(UInt64(room.text(at: index).count)) }
            for message in pending { writer.writeVarint(UInt64(message.text.utf8.count)) }
            for index in 0..<applied { writer.bytes.append(contentsOf: room.text(at: index)) }
            for message in pending {
                var text = message.text
                text.withUTF8 { writer.bytes.append(contentsOf: $0) }
            }
        }
        return writer.bytes
    }

    // MARK: - Decoding

    static func decode(bytes: [UInt8], path: String) throws -> (TenantState, UInt64) {
        let (body, lsn) = try self.container(bytes: bytes, path: path)
        do {
            return (try body.withUnsafeBytes { try Self.state(from: $0) }, lsn)
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
        try bytes.withUnsafeBytes { file in
            func corrupt(_ offset: Int, _ reason: String) -> WALError {
                WALError.corrupt(file: path, offset: offset, reason: reason)
            }
            guard file.count >= Self.headerSize + Self.trailer.count, file.prefix(8).elementsEqual(Self.magic) else {
                throw corrupt(0, "not a checkpoint")
            }
            let headerCRC = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: file[0..<20]))
            guard CRC32C.unmask(file.loadLittleEndian(UInt32.self, at: 20)) == headerCRC else {
                throw corrupt(0, "bad checkpoint header checksum")
            }
            let lsn = file.loadLittleEndian(UInt64.self, at: 8)
            guard lsn <= WALFormat.maxLSN else { throw corrupt(8, "checkpoint lsn \(lsn) out of range") }
            let blockCount = Int(file.loadLittleEndian(UInt32.self, at: 16))
            // lz4 expands up to 255 times: a crafted file of a few MB could otherwise ask for
            // gigabytes. Real bodies (chat text, columns of small numbers) stay far below this.
            let maxBody = max(
                Self.minimumBodyBound,
                file.count.multipliedReportingOverflow(by: Self.maxExpansion).partialValue
            )
            var body: [UInt8] = []
            var offset = Self.headerSize
            let maxStored = LZ4Block.compressBound(Self.blockSize)
            for _ in 0..<blockCount {
                guard file.count - offset >= Self.blockHeaderSize else { throw corrupt(offset, "truncated block") }
                let crc = file.loadLittleEndian(UInt32.self, at: offset)
                let rawLength = Int(file.loadLittleEndian(UInt32.self, at: offset + 4))
                let storedLength = Int(file.loadLittleEndian(UInt32.self, at: offset + 8))
                guard rawLength <= Self.blockSize, storedLength <= maxStored,
                    file.count - offset - Self.blockHeaderSize >= storedLength
                else { throw corrupt(offset, "block size out of bounds") }
                guard maxBody - body.count >= rawLength else {
                    throw corrupt(offset, "body over \(maxBody) bytes, \(Self.maxExpansion) times the file")
                }
                let end = offset + Self.blockHeaderSize + storedLength
                guard CRC32C.unmask(crc) == CRC32C.checksum(UnsafeRawBufferPointer(rebasing: file[(offset + 4)..<end]))
                else { throw corrupt(offset, "block checksum mismatch") }
                let stored = Array(file[(offset + Self.blockHeaderSize)..<end])
                do {
                    body += try LZ4Block.decompress(stored, decodedSize: rawLength, maxDecodedSize: Self.blockSize)
                } catch {
                    throw corrupt(offset, "\(error)")
                }
                offset = end
            }
            guard file.count - offset == Self.trailer.count, file[offset...].elementsEqual(Self.trailer) else {
                throw corrupt(offset, "missing checkpoint trailer")
            }
            return (body, lsn)
        }
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
    static func state(from body: UnsafeRawBufferPointer) throws -> TenantState {
        var reader = BinaryReader(body)
        var state = TenantState()
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
            var timestamps: [Int64] = []
            timestamps.reserveCapacity(count)
            var previous: Int64 = 0
            for _ in 0..<count {
                let (sum, overflow) = previous.addingReportingOverflow(try reader.readSignedVarint())
                guard !overflow else { throw RecordDecodingError.invalidValue("timestamp") }
                previous = sum
                timestamps.append(previous)
            }
            var users: [Int] = []
            users.reserveCapacity(count)
            for _ in 0..<count {
                let index = try reader.readVarint()
                guard index < UInt64(authors.count) else { throw RecordDecodingError.invalidValue("author index") }
                users.append(Int(index))
            }
            var lengths: [Int] = []
            lengths.reserveCapacity(count)
            for _ in 0..<count { lengths.append(try reader.readCount(minimumSize: 1, "text length")) }
            for index in 0..<count {
                let text = try reader.readString(count: lengths[index])
                let message = Message(
                    seq: UInt64(index + 1),
                    timestamp: timestamps[index],
                    user: authors[users[index]],
                    text: text
                )
                try state.apply(.message(room: room, message))
            }
        }
        guard reader.isAtEnd else { throw RecordDecodingError.trailingBytes }
        return state
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { self.append(contentsOf: $0) }
    }
}

extension UnsafeRawBufferPointer {
    fileprivate func loadLittleEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        T(littleEndian: self.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
