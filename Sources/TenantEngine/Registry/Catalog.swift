import Foundation

/// The index of tenants (their metadata, by id and subdomain) in `<data>/catalog/tenants.json`:
/// a cache that start-up checks against the tenant directories and rebuilds from them when
/// missing or unreadable. Activating a tenant refreshes its entry from the tenant's own log.
struct Catalog: Sendable {
    private struct File: Codable {
        var version: Int
        var tenants: [TenantMetadata]
    }

    private(set) var entries: [String: TenantMetadata] = [:]
    private(set) var idBySubdomain: [String: String] = [:]
    private var sorted: [String]?

    mutating func insert(_ metadata: TenantMetadata) {
        if let old = self.entries[metadata.tenantID], self.idBySubdomain[old.subdomain] == old.tenantID {
            self.idBySubdomain[old.subdomain] = nil
        }
        if self.entries[metadata.tenantID] == nil { self.sorted = nil }
        self.entries[metadata.tenantID] = metadata
        if !metadata.subdomain.isEmpty { self.idBySubdomain[metadata.subdomain] = metadata.tenantID }
    }

    mutating func remove(id: String) {
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

    /// Decodes the bytes of a catalog file, or nil when they are not one.
    static func decode(bytes: [UInt8]) -> Catalog? {
        guard let file = try? JSONDecoder().decode(File.self, from: Data(bytes)), file.version == 2 else { return nil }
        var catalog = Catalog()
        for entry in file.tenants { catalog.insert(entry) }
        return catalog
    }

    /// The bytes of the catalog file.
    func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let file = File(version: 2, tenants: self.entries.values.sorted { $0.tenantID < $1.tenantID })
        return Array(try encoder.encode(file))
    }
}
