import WAL

/// One event of a primary's replication stream (docs/architecture.md, "Replicas"). The stream is
/// a sequence of frames, each `u32 body length | u32 masked CRC-32C of the body | body`, the body
/// `u8 kind` and the kind's fields (little-endian integers; a tenant id as `u8 length` and its
/// bytes; byte strings as `u32 length` and their bytes). A frame that does not decode closes the
/// link (the replica reconnects and resumes); it never reaches a tenant.
public enum ReplicationFrame: Equatable, Sendable {
    /// The stream's start: the primary's replication id (40 hex digits), the offset of the
    /// first frame after this one, and the primary's epoch (raised at each promotion).
    case hello(replicationID: String, offset: UInt64, epoch: UInt64)
    /// A tenant's full copy follows: its state at `lsn`, `size` bytes in chunks.
    case snapshotBegin(tenant: String, lsn: UInt64, size: UInt64)
    /// `bytes` of the copy at `offset`.
    case snapshotChunk(tenant: String, offset: UInt64, bytes: [UInt8])
    /// The copy is whole: its CRC-32C (unmasked) over every byte.
    case snapshotEnd(tenant: String, crc: UInt32)
    /// A record of the tenant's log at the primary's `lsn`: its type and payload as in the log.
    case record(tenant: String, lsn: UInt64, type: UInt8, payload: [UInt8])
    /// The tenant is gone from the primary (deleted, or handed to another server).
    case drop(tenant: String)
    /// Once a second: the primary's offset now (a replica's lag is measured against it).
    case ping(offset: UInt64)

    enum Kind: UInt8 {
        case hello = 1
        case snapshotBegin = 2
        case snapshotChunk = 3
        case snapshotEnd = 4
        case record = 5
        case drop = 6
        case ping = 7
    }

    /// The bytes before a frame's body: its length and its checksum.
    public static let headerSize = 8

    var kind: Kind {
        switch self {
        case .hello: return .hello
        case .snapshotBegin: return .snapshotBegin
        case .snapshotChunk: return .snapshotChunk
        case .snapshotEnd: return .snapshotEnd
        case .record: return .record
        case .drop: return .drop
        case .ping: return .ping
        }
    }

    /// The frame's bytes, header and body.
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        self.encode(into: &bytes)
        return bytes
    }

    /// Appends the frame's bytes to `bytes`. A frame the decoder would refuse (an invalid tenant
    /// id, an lsn out of range, a chunk over its bound) is a bug of the primary: debug builds
    /// stop at it rather than send a stream the replica would reconnect to forever.
    public func encode(into bytes: inout [UInt8]) {
        let start = bytes.count
        defer {
            assert(
                bytes[start...].withUnsafeBytes { try? Self.decode($0) }?.frame == self,
                "a replication frame the decoder refuses: \(self.kind)"
            )
        }
        var body = BinaryWriter(capacity: 32)
        body.write(self.kind.rawValue)
        switch self {
        case .hello(let replicationID, let offset, let epoch):
            Self.write(short: replicationID, into: &body)
            body.write(offset)
            body.write(epoch)
        case .snapshotBegin(let tenant, let lsn, let size):
            Self.write(short: tenant, into: &body)
            body.write(lsn)
            body.write(size)
        case .snapshotChunk(let tenant, let offset, let chunk):
            Self.write(short: tenant, into: &body)
            body.write(offset)
            body.write(bytes: chunk)
        case .snapshotEnd(let tenant, let crc):
            Self.write(short: tenant, into: &body)
            body.write(crc)
        case .record(let tenant, let lsn, let type, let payload):
            Self.write(short: tenant, into: &body)
            body.write(lsn)
            body.write(type)
            body.write(bytes: payload)
        case .drop(let tenant):
            Self.write(short: tenant, into: &body)
        case .ping(let offset):
            body.write(offset)
        }
        Self.frame(body: body.bytes, into: &bytes)
    }

    /// A body framed with its length and checksum.
    static func frame(body: [UInt8], into bytes: inout [UInt8]) {
        var header = BinaryWriter(capacity: Self.headerSize)
        header.write(UInt32(body.count))
        header.write(body.withUnsafeBytes { CRC32C.mask(CRC32C.checksum($0)) })
        bytes.append(contentsOf: header.bytes)
        bytes.append(contentsOf: body)
    }

    private static func write(short text: String, into writer: inout BinaryWriter) {
        let utf8 = Array(text.utf8)
        precondition(utf8.count <= Int(UInt8.max), "a tenant or replication id is at most 255 bytes")
        writer.write(UInt8(utf8.count))
        writer.bytes.append(contentsOf: utf8)
    }

    /// The frame at the start of `bytes`, and how many bytes it took; nil when `bytes` holds only
    /// part of it.
    /// - Parameter maxFrameBytes: the largest body taken; a longer declaration is an error at once,
    ///   before anything waits for (or sizes anything by) it.
    /// - Throws: ``ReplicationStreamError`` when the frame does not decode.
    public static func decode(
        _ bytes: UnsafeRawBufferPointer,
        maxFrameBytes: Int = EngineLimits.replicationMaxFrameBytes
    ) throws -> (frame: ReplicationFrame, consumed: Int)? {
        guard bytes.count >= Self.headerSize else { return nil }
        var header = BinaryReader(bytes)
        let length = Int(try header.read(UInt32.self))
        let storedCRC = try header.read(UInt32.self)
        guard length >= 1, length <= maxFrameBytes else { throw ReplicationStreamError.badLength(length) }
        guard bytes.count - Self.headerSize >= length else { return nil }
        let body = UnsafeRawBufferPointer(rebasing: bytes[Self.headerSize..<(Self.headerSize + length)])
        guard CRC32C.mask(CRC32C.checksum(body)) == storedCRC else { throw ReplicationStreamError.checksum }
        do {
            return (try Self.decode(body: body), Self.headerSize + length)
        } catch let error as ReplicationStreamError {
            throw error
        } catch {
            throw ReplicationStreamError.malformed("\(error)")
        }
    }

    /// A checked body.
    private static func decode(body: UnsafeRawBufferPointer) throws -> ReplicationFrame {
        var reader = BinaryReader(body)
        let raw = try reader.read(UInt8.self)
        guard let kind = Kind(rawValue: raw) else { throw ReplicationStreamError.unknownKind(raw) }
        let frame: ReplicationFrame
        switch kind {
        case .hello:
            let replicationID = try Self.readShort(&reader)
            guard Self.isReplicationID(replicationID) else {
                throw ReplicationStreamError.malformed("replication id is not 40 hex digits")
            }
            frame = .hello(
                replicationID: replicationID,
                offset: try reader.read(UInt64.self),
                epoch: try reader.read(UInt64.self)
            )
        case .snapshotBegin:
            let tenant = try Self.readTenant(&reader)
            let lsn = try Self.readLSN(&reader)
            let size = try reader.read(UInt64.self)
            guard size <= EngineLimits.replicationMaxSnapshotBytes else {
                throw ReplicationStreamError.malformed("snapshot of \(size) bytes")
            }
            frame = .snapshotBegin(tenant: tenant, lsn: lsn, size: size)
        case .snapshotChunk:
            let tenant = try Self.readTenant(&reader)
            let offset = try reader.read(UInt64.self)
            let chunk = try reader.readBytes()
            guard chunk.count <= EngineLimits.replicationChunkSize,
                offset <= EngineLimits.replicationMaxSnapshotBytes - UInt64(chunk.count)
            else { throw ReplicationStreamError.malformed("snapshot chunk out of bounds") }
            frame = .snapshotChunk(tenant: tenant, offset: offset, bytes: chunk)
        case .snapshotEnd:
            frame = .snapshotEnd(tenant: try Self.readTenant(&reader), crc: try reader.read(UInt32.self))
        case .record:
            let tenant = try Self.readTenant(&reader)
            let lsn = try Self.readLSN(&reader)
            let type = try reader.read(UInt8.self)
            guard TenantRecord.Kind(rawValue: type) != nil else {
                throw ReplicationStreamError.malformed("unknown record type \(type)")
            }
            frame = .record(tenant: tenant, lsn: lsn, type: type, payload: try reader.readBytes())
        case .drop:
            frame = .drop(tenant: try Self.readTenant(&reader))
        case .ping:
            frame = .ping(offset: try reader.read(UInt64.self))
        }
        guard reader.isAtEnd else { throw ReplicationStreamError.malformed("trailing bytes in a \(kind) frame") }
        return frame
    }

    private static func readShort(_ reader: inout BinaryReader) throws -> String {
        try reader.readString(count: Int(try reader.read(UInt8.self)))
    }

    private static func readTenant(_ reader: inout BinaryReader) throws -> String {
        let tenant = try Self.readShort(&reader)
        guard Names.isValidTenantID(tenant) else { throw ReplicationStreamError.malformed("bad tenant id") }
        return tenant
    }

    /// An lsn a log can hold: 1 through the format's last.
    private static func readLSN(_ reader: inout BinaryReader) throws -> UInt64 {
        let lsn = try reader.read(UInt64.self)
        guard lsn >= 1, lsn <= WALFormat.maxLSN else { throw ReplicationStreamError.malformed("lsn \(lsn)") }
        return lsn
    }

    /// Whether `text` is a replication id: 40 lowercase hex digits.
    public static func isReplicationID(_ text: String) -> Bool {
        text.utf8.count == 40 && text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }
}

/// A replication stream that does not decode: the link is closed and the replica resumes.
public enum ReplicationStreamError: Error, Equatable, CustomStringConvertible {
    /// A body length of 0, or over the largest frame.
    case badLength(Int)
    case checksum
    case unknownKind(UInt8)
    case malformed(String)

    public var description: String {
        switch self {
        case .badLength(let length): return "replication frame of \(length) bytes"
        case .checksum: return "replication frame checksum mismatch"
        case .unknownKind(let kind): return "unknown replication frame kind \(kind)"
        case .malformed(let what): return "malformed replication frame: \(what)"
        }
    }
}
