import Foundation

/// A change to a tenant, as appended to its log. The WAL type byte is ``Kind``'s raw value.
enum TenantRecord {
    enum Kind: UInt8 {
        case metadata = 1
        case userPut = 2
        case userDelete = 3
        case message = 4
        /// Only in a shared log (`schema`, `shared`): the tenant is gone.
        case tenantDeleted = 5
    }

    /// The whole metadata, replacing what was there.
    case metadata(TenantMetadata)
    /// A user added or changed.
    case userPut(User)
    /// A user removed.
    case userDelete(String)
    /// A message posted.
    case message(room: String, Message)
    /// The tenant was deleted (shared logs only).
    case tenantDeleted

    var kind: Kind {
        switch self {
        case .metadata: return .metadata
        case .userPut: return .userPut
        case .userDelete: return .userDelete
        case .message: return .message
        case .tenantDeleted: return .tenantDeleted
        }
    }

    /// The payload bytes.
    func encode() -> [UInt8] {
        var bytes: [UInt8] = []
        self.encode(into: &bytes)
        return bytes
    }

    /// The payload bytes, in place of what `scratch` held, in its storage when it is large
    /// enough (the tenant's log reuses one buffer for every record it appends).
    func encode(into scratch: inout [UInt8]) {
        var writer = BinaryWriter(capacity: 0)
        writer.bytes = scratch
        scratch = []
        writer.bytes.removeAll(keepingCapacity: true)
        self.write(into: &writer)
        scratch = writer.bytes
    }

    private func write(into writer: inout BinaryWriter) {
        switch self {
        case .metadata(let metadata):
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            // Encoding a struct of strings, integers and booleans cannot fail.
            writer.bytes = Array(try! encoder.encode(metadata))
        case .userPut(let user):
            writer.write(user.name)
            writer.write(user.role.rawValue)
            writer.write(bytes: user.tokenHash)
            writer.write(user.joinedAt)
        case .userDelete(let name):
            writer.write(name)
        case .message(let room, let message):
            // Three length prefixes of 4 bytes, seq and timestamp of 8.
            writer.bytes.reserveCapacity(28 + room.utf8.count + message.user.utf8.count + message.text.utf8.count)
            writer.write(room)
            writer.write(message.seq)
            writer.write(message.timestamp)
            writer.write(message.user)
            writer.write(message.text)
        case .tenantDeleted:
            break
        }
    }

    /// Decodes a payload read back from the log.
    static func decode(type: UInt8, payload: UnsafeRawBufferPointer) throws -> TenantRecord {
        guard let kind = Kind(rawValue: type) else { throw RecordDecodingError.unknownType(type) }
        var reader = BinaryReader(payload)
        let record: TenantRecord
        switch kind {
        case .metadata:
            do {
                record = .metadata(try JSONDecoder().decode(TenantMetadata.self, from: Data(payload)))
            } catch {
                throw RecordDecodingError.invalidValue("metadata: \(error)")
            }
            return record
        case .userPut:
            let name = try reader.readString()
            guard let role = Role(rawValue: try reader.readString()) else {
                throw RecordDecodingError.invalidValue("role")
            }
            let hash = try reader.readBytes()
            guard hash.count == Tokens.hashSize else { throw RecordDecodingError.invalidValue("token hash") }
            record = .userPut(User(name: name, role: role, tokenHash: hash, joinedAt: try reader.read(Int64.self)))
        case .userDelete:
            record = .userDelete(try reader.readString())
        case .message:
            let room = try reader.readString()
            let seq = try reader.read(UInt64.self)
            let timestamp = try reader.read(Int64.self)
            let user = try reader.readString()
            let text = try reader.readString()
            record = .message(room: room, Message(seq: seq, timestamp: timestamp, user: user, text: text))
        case .tenantDeleted:
            record = .tenantDeleted
        }
        guard reader.isAtEnd else { throw RecordDecodingError.trailingBytes }
        return record
    }
}
