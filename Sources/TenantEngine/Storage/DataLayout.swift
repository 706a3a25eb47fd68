/// Every name on disk, in one place: the data directory's files, a tenant directory's, and the
/// shared log's. Nothing else in the engine spells a path.
///
/// ```
/// <data>/strategy                  the isolation strategy the directory was made with
/// <data>/admin.token               the operator token (when not given by flag or environment)
/// <data>/catalog/tenants.bin       the tenant index (database strategy; a cache of the tenants' logs)
/// <data>/<prefix><id>/             one tenant (database strategy): wal/, checkpoint/, REPAIRED.txt
/// <data>/.creating-<id>/           a tenant being created, renamed into place once durable
/// <data>/.trash/                   deleted tenants on their way out
/// <data>/shared/wal/               the one log of every tenant (schema and shared strategies)
/// <data>/shared/checkpoint/        the shared log's checkpoints, every tenant's state in one file
/// ```
public struct DataLayout: Sendable {
    /// The data directory.
    public let root: String
    /// The prefix of tenant directory names (`TENANT_DATABASE_PREFIX`).
    public let prefix: String

    /// The layout of a data directory.
    public init(root: String, prefix: String = "tenant_") {
        self.root = root
        self.prefix = prefix
    }

    /// `<data>/strategy`.
    public var strategyFile: String { self.root + "/strategy" }
    /// `<data>/admin.token`.
    public var adminTokenFile: String { self.root + "/admin.token" }
    /// `<data>/catalog`.
    public var catalogDirectory: String { self.root + "/catalog" }
    /// `<data>/catalog/tenants.bin`.
    public var catalogFile: String { self.catalogDirectory + "/tenants.bin" }
    /// The JSON catalog of earlier versions: read when there is no binary one, removed once one
    /// is written.
    var legacyCatalogFile: String { self.catalogDirectory + "/tenants.json" }
    /// `<data>/.trash`.
    public var trashDirectory: String { self.root + "/.trash" }
    /// The name of the trash in the data directory.
    static let trashName = ".trash"
    /// The prefix of a creation's staging directory.
    static let stagingPrefix = ".creating-"
    /// The name of the shared log's directory in the data directory.
    static let sharedName = "shared"

    /// The directory of tenant `id`.
    public func tenantDirectory(_ id: String) -> String { self.root + "/" + self.directoryName(id) }
    /// The name of tenant `id`'s directory.
    public func directoryName(_ id: String) -> String { self.prefix + id }
    /// The tenant id a directory name stands for, or nil for any other name.
    public func tenantID(ofDirectoryNamed name: String) -> String? {
        guard name.hasPrefix(self.prefix) else { return nil }
        let id = String(name.dropFirst(self.prefix.count))
        return Names.isValidTenantID(id) ? id : nil
    }
    /// Where tenant `id` is written before it is renamed into place.
    func stagingDirectory(_ id: String) -> String { self.root + "/" + Self.stagingPrefix + id }
    /// Where a deleted tenant's directory goes, `stamp` keeping deletions of one id apart.
    func trashEntry(_ id: String, stamp: Int64) -> String {
        self.trashDirectory + "/" + self.directoryName(id) + "-\(stamp)"
    }

    /// `<data>/shared`.
    public var sharedDirectory: String { self.root + "/" + Self.sharedName }
    /// The log every tenant shares under `schema` and `shared`.
    public var sharedLog: TenantFiles { TenantFiles(self.sharedDirectory) }
}

/// The files of one log with its checkpoints: a tenant directory, or the shared log's directory.
public struct TenantFiles: Sendable {
    /// The directory.
    public let directory: String

    /// The files of the log kept in `directory`.
    public init(_ directory: String) {
        self.directory = directory
    }

    /// `wal/`: the log's segments.
    public var wal: String { self.directory + "/wal" }
    /// `checkpoint/`: the checkpoints.
    public var checkpoints: String { self.directory + "/checkpoint" }
    /// The note `tenantctl repair` leaves.
    public var repairNote: String { self.directory + "/REPAIRED.txt" }
}
