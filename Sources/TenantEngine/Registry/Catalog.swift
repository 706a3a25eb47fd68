import Foundation
import WAL

/// The index of tenants (id, subdomain, name) in `<data>/catalog/tenants.json`: a cache that
/// start-up checks against the tenant directories and rebuilds from them when missing or stale.
struct Catalog: Sendable {
    struct Entry: Sendable, Codable, Hashable {
        var id: String
        var subdomain: String
        var name: String
    }

    private struct File: Codable {
        var version: Int
        var tenants: [Entry]
    }

    private(set) var entries: [String: Entry] = [:]
    private(set) var idBySubdomain: [String: String] = [:]

    mutating func insert(_ entry: Entry) {
        if let old = self.entries[entry.id] { self.idBySubdomain[old.subdomain] = nil }
        self.entries[entry.id] = entry
        self.idBySubdomain[entry.subdomain] = entry.id
    }

    mutating func remove(id: String) {
        guard let old = self.entries.removeValue(forKey: id) else { return }
        self.idBySubdomain[old.subdomain] = nil
    }

    static func path(in dataDirectory: String) -> String {
        dataDirectory + "/catalog/tenants.json"
    }

    /// Reads the catalog file; an unreadable one counts as missing.
    static func load(from dataDirectory: String) -> Catalog? {
        guard let bytes = try? POSIXFile.readAll(path(in: dataDirectory)),
            let file = try? JSONDecoder().decode(File.self, from: Data(bytes)),
            file.version == 1
        else { return nil }
        var catalog = Catalog()
        for entry in file.tenants { catalog.insert(entry) }
        return catalog
    }

    /// Writes the catalog atomically.
    func save(to dataDirectory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let file = File(version: 1, tenants: self.entries.values.sorted { $0.id < $1.id })
        let directory = dataDirectory + "/catalog"
        if try POSIXFile.makeDirectory(directory) { try POSIXFile.fsyncDirectory(dataDirectory) }
        try POSIXFile.writeFileAtomically(Catalog.path(in: dataDirectory), contents: Array(try encoder.encode(file)))
    }
}
