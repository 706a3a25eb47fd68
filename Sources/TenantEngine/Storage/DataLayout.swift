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
/// <data>/.incoming-<id>/           a tenant arriving by TENANT MIGRATE (RECEIVING, PREPARED)
/// <data>/.moving-<id>/             a tenant being moved here from another region
/// <data>/.migrated/<dir>-<ms>/     a tenant handed to another server, kept for the operator
/// <data>/regions/<name>            the regions this data directory has known
/// <region>/.tenantd-region         which region a region root is
/// <region>/.backups/<id>/          a region's tenants' scheduled backups (no --backup-dir)
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
    /// `<data>/catalog/credentials.log`: the credential changes since the catalog was written.
    var credentialJournal: String { self.catalogDirectory + "/credentials.log" }
    /// `<data>/catalog/credentials.old`: the journal a compaction set aside.
    var previousCredentialJournal: String { self.catalogDirectory + "/credentials.old" }
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
    /// Where `tenantctl import` writes tenant `id` before it is renamed into place.
    func importingDirectory(_ id: String) -> String { self.entry(Self.importingPrefix + id) }
    /// The prefix of an import's staging directory (never the server's own `.creating-`, which a
    /// starting server removes).
    static let importingPrefix = ".importing-"
    /// Where a deleted tenant's directory goes, `stamp` keeping deletions of one id apart.
    func trashEntry(_ id: String, stamp: Int64) -> String {
        self.trashDirectory + "/" + self.directoryName(id) + "-\(stamp)"
    }

    /// The name of a migration's staging directory before its tenant id.
    static let incomingPrefix = ".incoming-"
    /// The name of a region move's staging directory before its tenant id.
    static let movingPrefix = ".moving-"
    /// The name of the directory where handed-over tenants' copies are kept.
    static let migratedName = ".migrated"
    /// The name of the file that says which region a root is.
    static let regionIdentityName = ".tenantd-region"
    /// The name of a region root's scheduled backups directory.
    static let regionBackupsName = ".backups"

    /// An entry of the data directory, by the name a listing gave.
    public func entry(_ name: String) -> String { self.root + "/" + name }
    /// Where tenant `id` arrives by TENANT MIGRATE, until its COMMIT.
    func incomingDirectory(_ id: String) -> String { self.entry(Self.incomingPrefix + id) }
    /// The tenant id an incoming staging directory's name stands for, or nil for any other name.
    func tenantID(ofIncomingNamed name: String) -> String? {
        guard name.hasPrefix(Self.incomingPrefix) else { return nil }
        let id = String(name.dropFirst(Self.incomingPrefix.count))
        return Names.isValidTenantID(id) ? id : nil
    }
    /// Where tenant `id` is copied while it moves to this region.
    func movingDirectory(_ id: String) -> String { self.entry(Self.movingPrefix + id) }
    /// `<data>/.migrated`.
    var migratedDirectory: String { self.entry(Self.migratedName) }
    /// Where a handed-over tenant directory named `name` is kept, `stamp` keeping migrations apart.
    func migratedEntry(_ name: String, stamp: Int64) -> String { self.migratedDirectory + "/" + name + "-\(stamp)" }
    /// `<data>/regions`.
    var regionsDirectory: String { self.entry("regions") }
    /// The record of region `name` in the data directory.
    func regionRecord(_ name: String) -> String { self.regionsDirectory + "/" + name }
    /// `<region>/.tenantd-region`.
    var regionIdentityFile: String { self.entry(Self.regionIdentityName) }
    /// Where tenant `id`'s scheduled backups go in a region root without `--backup-dir`.
    func regionBackups(_ id: String) -> String { self.entry(Self.regionBackupsName) + "/" + id }
    /// The files of tenant `id`'s directory.
    public func tenantFiles(_ id: String) -> TenantFiles { TenantFiles(self.tenantDirectory(id)) }

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
    /// A file of the directory by its relative path (`wal/00000000000000000001.wal`), as a
    /// listing or a migration's manifest names it.
    public func file(_ relative: String) -> String {
        relative.isEmpty ? self.directory : self.directory + "/" + relative
    }

    /// A segment of the log, by name.
    public func segment(_ name: String) -> String { self.wal + "/" + name }
    /// A checkpoint file, by name.
    public func checkpoint(_ name: String) -> String { self.checkpoints + "/" + name }

    /// `MIGRATED_TO`: the source's decision, naming the server the tenant was handed to.
    var migratedTo: String { self.file(Self.migratedToName) }
    /// `RECEIVING`: the migration a destination's staging receives.
    var receiving: String { self.file(Self.receivingName) }
    /// `PREPARED`: the migration whose copy the destination checked, synced and verified.
    var prepared: String { self.file(Self.preparedName) }
    /// `MIGRATED_IN`: the migration a served tenant arrived by.
    var migratedIn: String { self.file(Self.migratedInName) }
    /// `MOVED_FROM`: the region a moved tenant came from.
    var movedFrom: String { self.file(Self.movedFromName) }
    /// `RESTORED_FROM`: the snapshot an imported tenant came from.
    var restoredFrom: String { self.file(Self.restoredFromName) }

    static let migratedToName = "MIGRATED_TO"
    static let receivingName = "RECEIVING"
    static let preparedName = "PREPARED"
    static let migratedInName = "MIGRATED_IN"
    static let movedFromName = "MOVED_FROM"
    public static let restoredFromName = "RESTORED_FROM"
    /// Markers that belong to one server's copy of a tenant, never sent by a migration.
    static let markerNames: Set<String> = [migratedToName, receivingName, preparedName, migratedInName, movedFromName]
}

/// One tenant's scheduled backups: `<backup-dir>/<id>/` (or `<region>/.backups/<id>/`), a
/// snapshot directory per backup named by its time, written as `<name>.partial` first.
struct BackupFolder: Sendable {
    /// The folder.
    let path: String

    /// `<backup-dir>/<id>`.
    init(backupDirectory: String, id: String) {
        self.path = backupDirectory + "/" + id
    }

    /// `<region>/.backups/<id>`.
    init(region: DataLayout, id: String) {
        self.path = region.regionBackups(id)
    }

    /// The folder at `path`.
    init(path: String) {
        self.path = path
    }

    /// A backup, or any entry a listing of the folder gave, by its name.
    func entry(_ name: String) -> String { self.path + "/" + name }
    /// Where backup `name` is written before it is renamed into place.
    func partial(_ name: String) -> String { self.entry(name) + ".partial" }
}
