import Foundation
import WAL

/// The index of tenants (their metadata, by id and subdomain) in `<data>/catalog/tenants.bin`:
/// a cache that start-up checks against the tenant directories and rebuilds from them when
/// missing or unreadable. Activating a tenant refreshes its entry from the tenant's own log.
///
/// It also keeps every tenant's ``CredentialKey``s, so that AUTH refuses a wrong token without
/// opening the tenant: an anonymous client never makes the server open a file.
///
/// File, integers little-endian: `magic "TNTDCAT2" (8) | body length (8) | masked crc32c of the
/// body (4) | body`. The body is a varint count, then per tenant its id, name and subdomain
/// (u32 length + UTF-8), plan (u8), `max_users`, `max_storage_bytes`, `max_messages_per_day`,
/// `created_at`, `updated_at` (zig-zag varints), flags (u8: 1 active, 2 suspended), its
/// settings (a varint count of key and value strings) and its credential keys (a varint count of
/// u64). Start-up reads it at well under 2 µs a tenant (docs/benchmarks.md). A `TNTDCAT1` file
/// (no keys) and the JSON file of earlier versions (`tenants.json`) are still read: their tenants'
/// keys are unknown, and start-up reads each tenant once to learn them.
struct Catalog: Sendable {
    private struct LegacyFile: Codable {
        var version: Int
        var tenants: [TenantMetadata]
    }

    static let magic = Array("TNTDCAT2".utf8)
    /// The catalog of earlier versions, without credential keys.
    static let magicVersion1 = Array("TNTDCAT1".utf8)
    static let headerSize = 20
    /// The plans by their byte in the file (a stored array: `allCases` would build one per read).
    private static let plans = Plan.allCases

    private(set) var entries: [String: TenantMetadata] = [:]
    private(set) var idBySubdomain: [String: String] = [:]
    /// Each tenant's credential keys; a tenant without an entry has keys not known yet.
    private(set) var credentials: [String: Set<CredentialKey>] = [:]
    private var sorted: [String]?

    init() {}

    init(capacity: Int) {
        self.entries.reserveCapacity(capacity)
        self.idBySubdomain.reserveCapacity(capacity)
    }

    mutating func insert(_ metadata: TenantMetadata) {
        if let old = self.entries[metadata.tenantID], self.idBySubdomain[old.subdomain] == old.tenantID {
            self.idBySubdomain[old.subdomain] = nil
        }
        if self.entries[metadata.tenantID] == nil { self.sorted = nil }
        self.entries[metadata.tenantID] = metadata
        if !metadata.subdomain.isEmpty { self.idBySubdomain[metadata.subdomain] = metadata.tenantID }
    }

    /// Sets a known tenant's credential keys.
    mutating func setCredentials(_ keys: Set<CredentialKey>, for id: String) {
        guard self.entries[id] != nil else { return }
        self.credentials[id] = keys
    }

    /// Applies one change to a tenant's keys; nothing when they are not known.
    mutating func apply(_ change: CredentialChange, to id: String) {
        guard self.credentials[id] != nil else { return }
        if let removed = change.removed { self.credentials[id]!.remove(removed) }
        if let added = change.added { self.credentials[id]!.insert(added) }
    }

    /// Whether a key may authenticate to tenant `id`: false when it is none of the tenant's keys,
    /// nil when its keys are not known.
    func admits(_ key: CredentialKey, to id: String) -> Bool? {
        self.credentials[id].map { $0.contains(key) }
    }

    /// The id a name resolves to, as an id or as a subdomain, other than `id` itself: ids and
    /// subdomains are one namespace, so no tenant's id may equal another's subdomain or id.
    func otherTenant(named name: String, besides id: String) -> String? {
        guard !name.isEmpty else { return nil }
        if name != id, self.entries[name] != nil { return name }
        if let owner = self.idBySubdomain[name], owner != id { return owner }
        return nil
    }

    mutating func remove(id: String) {
        self.credentials[id] = nil
        guard let old = self.entries.removeValue(forKey: id) else { return }
        if self.idBySubdomain[old.subdomain] == id { self.idBySubdomain[old.subdomain] = nil }
        self.sorted = nil
    }

    /// Every id, sorted (cached until the set of ids changes).
    mutating func sortedIDs() -> [String] {
        if let sorted { return sorted }
        let ids = self.entries.keys.sorted()
        self.sorted = ids
        return ids
    }

    // MARK: - File

    /// The bytes of the catalog file.
    func encoded() throws -> [UInt8] {
        var writer = BinaryWriter(capacity: 64 + self.entries.count * 96)
        writer.writeVarint(UInt64(self.entries.count))
        for metadata in self.entries.values {
            writer.write(metadata.tenantID)
            writer.write(metadata.name)
            writer.write(metadata.subdomain)
            writer.write(UInt8(Self.plans.firstIndex(of: metadata.plan)!))
            writer.writeSignedVarint(metadata.maxUsers)
            writer.writeSignedVarint(metadata.maxStorageBytes)
            writer.writeSignedVarint(metadata.maxMessagesPerDay)
            writer.writeSignedVarint(metadata.createdAt)
            writer.writeSignedVarint(metadata.updatedAt)
            writer.write(UInt8((metadata.isActive ? 1 : 0) | (metadata.isSuspended ? 2 : 0)))
            writer.writeVarint(UInt64(metadata.settings.count))
            for (key, value) in metadata.settings.sorted(by: { $0.key < $1.key }) {
                writer.write(key)
                writer.write(value)
            }
            // Unknown keys are written as none: the reader then reads the tenant to learn them.
            let keys = self.credentials[metadata.tenantID]
            writer.write(UInt8(keys == nil ? 0 : 1))
            writer.writeVarint(UInt64(keys?.count ?? 0))
            for key in keys ?? [] { writer.write(key.value) }
        }
        var file = Self.magic
        file.reserveCapacity(Self.headerSize + writer.bytes.count)
        withUnsafeBytes(of: UInt64(writer.bytes.count).littleEndian) { file.append(contentsOf: $0) }
        withUnsafeBytes(of: CRC32C.mask(CRC32C.checksum(writer.bytes)).littleEndian) { file.append(contentsOf: $0) }
        file += writer.bytes
        return file
    }

    /// The fewest body bytes one tenant takes: three empty strings, the plan, five one-byte
    /// varints, the flags and an empty settings count (and in version 2 the credential flag and
    /// an empty key count, not counted: the bound stays valid for both versions).
    private static let minimumEntrySize = 3 * 4 + 1 + 5 + 1 + 1

    /// Decodes the bytes of a catalog file (binary, or the JSON of earlier versions), or nil when
    /// they are not one: start-up then rebuilds the catalog from the tenant directories. Every
    /// count is bounded by the bytes left, every id and subdomain checked.
    static func decode(bytes: [UInt8]) -> Catalog? {
        let version: Int
        if bytes.count >= Self.headerSize && bytes.prefix(8).elementsEqual(Self.magic) {
            version = 2
        } else if bytes.count >= Self.headerSize && bytes.prefix(8).elementsEqual(Self.magicVersion1) {
            version = 1
        } else {
            return Self.decodeLegacy(bytes: bytes)
        }
        return bytes.withUnsafeBytes { file -> Catalog? in
            let length = UInt64(littleEndian: file.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            let crc = UInt32(littleEndian: file.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
            guard length == UInt64(file.count - Self.headerSize) else { return nil }
            let body = UnsafeRawBufferPointer(rebasing: file[Self.headerSize...])
            guard CRC32C.unmask(crc) == CRC32C.checksum(body) else { return nil }
            return try? Self.decodeBody(body, version: version)
        }
    }

    private static func decodeBody(_ body: UnsafeRawBufferPointer, version: Int) throws -> Catalog {
        var reader = BinaryReader(body)
        let count = try reader.readCount(minimumSize: Self.minimumEntrySize, "tenant count")
        var catalog = Catalog(capacity: count)
        for _ in 0..<count {
            let id = try reader.readString()
            let name = try reader.readString()
            let subdomain = try reader.readString()
            let planIndex = Int(try reader.read(UInt8.self))
            guard Names.isValidTenantID(id), subdomain.isEmpty || Names.subdomainProblem(subdomain) == nil,
                planIndex < Self.plans.count
            else { throw RecordDecodingError.invalidValue("catalog entry") }
            let plan = Self.plans[planIndex]
            var metadata = TenantMetadata(
                tenantID: id,
                name: name,
                subdomain: subdomain,
                plan: plan,
                limits: PlanLimits(
                    maxUsers: try reader.readSignedVarint(),
                    maxStorageBytes: try reader.readSignedVarint(),
                    maxMessagesPerDay: try reader.readSignedVarint()
                ),
                now: try reader.readSignedVarint()
            )
            metadata.updatedAt = try reader.readSignedVarint()
            let flags = try reader.read(UInt8.self)
            metadata.isActive = flags & 1 != 0
            metadata.isSuspended = flags & 2 != 0
            let settings = try reader.readCount(minimumSize: 8, "settings count")
            for _ in 0..<settings {
                let key = try reader.readString()
                metadata.settings[key] = try reader.readString()
            }
            if version >= 2 {
                let known = try reader.read(UInt8.self)
                let keyCount = try reader.readCount(minimumSize: 8, "credential count")
                guard known <= 1, known == 1 || keyCount == 0 else {
                    throw RecordDecodingError.invalidValue("credential flag")
                }
                if known == 1 {
                    var keys = Set<CredentialKey>(minimumCapacity: keyCount)
                    for _ in 0..<keyCount { keys.insert(CredentialKey(value: try reader.read(UInt64.self))) }
                    catalog.credentials[id] = keys
                }
            }
            // A new id (one lookup), its subdomain taken by none before it.
            guard catalog.entries.updateValue(metadata, forKey: id) == nil else {
                throw RecordDecodingError.invalidValue("duplicate tenant id")
            }
            if !subdomain.isEmpty {
                guard catalog.idBySubdomain.updateValue(id, forKey: subdomain) == nil else {
                    throw RecordDecodingError.invalidValue("duplicate subdomain")
                }
            }
        }
        guard reader.isAtEnd else { throw RecordDecodingError.trailingBytes }
        // One namespace: no id may be another tenant's subdomain (a file that says otherwise was
        // not written by tenantd; start-up then rebuilds it from the directories).
        for (subdomain, owner) in catalog.idBySubdomain where subdomain != owner && catalog.entries[subdomain] != nil {
            throw RecordDecodingError.invalidValue("an id is another tenant's subdomain")
        }
        return catalog
    }

    /// The JSON catalog (`tenants.json`, version 2) of earlier versions.
    private static func decodeLegacy(bytes: [UInt8]) -> Catalog? {
        guard let file = try? JSONDecoder().decode(LegacyFile.self, from: Data(bytes)), file.version == 2 else {
            return nil
        }
        var catalog = Catalog(capacity: file.tenants.count)
        for entry in file.tenants where Names.isValidTenantID(entry.tenantID) { catalog.insert(entry) }
        return catalog
    }
}
