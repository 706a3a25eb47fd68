import Foundation
import Logging
import WAL

/// What a tenant is built with besides its data: the engine's settings, where it logs, and whom
/// it tells of its metadata once durable (the registry's catalog).
struct TenantContext: Sendable {
    var configuration: EngineConfiguration
    var logger: Logger
    var onMetadataChange: @Sendable (TenantMetadata) async throws -> Void
    /// Told of a change of the tenant's credentials once it is durable (the registry's keys).
    var onCredentialChange: @Sendable (String, CredentialChange) async throws -> Void = { _, _ in }
    /// The server's memory budget for messages; nil keeps every message in memory.
    var memory: MemoryBudget? = nil
    /// Every tenant's usage counters (one book per registry).
    var counters = TenantCounterBook()
    /// Where a tenant's cold message chunks go: its region's root (nil: the data directory).
    var coldDirectory: String? = nil

    /// A cold store for one tenant's rooms under the budget, if there is one.
    func makeColdStore() -> ColdStore? {
        self.memory.map {
            ColdStore(
                budget: $0,
                directory: self.coldDirectory ?? self.configuration.dataDirectory,
                logger: self.logger
            )
        }
    }
}

/// What a store finds in the data directory at start-up.
enum StoredTenants {
    /// Tenants in directories of their own, each opened on first use, and the index saved at
    /// the last run (nil when missing or unreadable: the registry rebuilds it).
    case onDisk(ids: Set<String>, index: Catalog?)
    /// Every tenant, recovered and serving.
    case resident([Tenant])
}

/// A deletion that failed; `removed` tells whether the tenant is gone all the same.
struct DeletionFailure: Error {
    var removed: Bool
    var error: TenantError
}

/// The storage seam: how one isolation strategy keeps tenants on disk. It owns the layout, the
/// tenants' creation, opening and deletion, the framing of their logs, checkpoints and segment
/// retention. The registry above it knows no strategy and no path: what only tenants with a
/// directory of their own can do is ``TenantDirectories``, which a store has or has not.
protocol TenantStore: Sendable {
    /// The data directory's names.
    var layout: DataLayout { get }
    /// True when idle tenants are closed and opened again on their next use.
    var passivates: Bool { get }

    /// Prepares the data directory and finds its tenants.
    func load(context: TenantContext) async throws -> StoredTenants
    /// Opens a stored tenant that is not open.
    /// - Throws: NOTFOUND when the store keeps no such tenant closed; IOERR when it does not recover.
    func open(id: String, context: TenantContext) async throws -> Tenant
    /// Writes a new tenant's first records (its metadata and owner) durably, once, and serves it.
    /// - Throws: IOERR when it could not be written; nothing of it is left then.
    func create(metadata: TenantMetadata, owner: User?, context: TenantContext) async throws -> Tenant
    /// Removes a tenant durably, closing its actor (NOTFOUND from then on) once removal is certain.
    /// - Throws: ``DeletionFailure``.
    func delete(id: String, tenant: Tenant?) async throws
    /// What the store can do with tenant directories, when its tenants have directories of their
    /// own (the `database` strategy); nil otherwise. The one way the registry tells strategies
    /// apart: every command that needs a directory asks for this capability.
    var directories: (any TenantDirectories)? { get }
    /// Checkpoints every tenant now: each open tenant's own log, or the whole shared log.
    func checkpoint(open tenants: [Tenant]) async throws
    /// Before the tenants are closed at shutdown: a store that checkpoints for its tenants does so.
    func prepareShutdown(checkpoint: Bool) async
    /// After every tenant is closed.
    func close() async
}

/// What a store whose tenants each have a directory of their own can do besides what every store
/// does (``TenantStore/directories``): region placement, MOVE, SNAPSHOT, ATTACH, DETACH, REOPEN,
/// backups, departures and migration hang on it. A strategy without tenant directories has
/// none, so no command branches on the strategy's name.
protocol TenantDirectories: Sendable {
    /// The data directory's names for tenant `id`: the data directory's, or its region's.
    func layout(for id: String) -> DataLayout
    /// The tenants whose migration was committed while the server was down, found at start-up.
    var departures: DepartureBook { get }
    /// True when tenant `id`'s directory is in the data directory or a region's root (ATTACH),
    /// which it is then known to be in.
    func hasDirectory(id: String) -> Bool
    /// The region tenant `id` lives in; "" for the data directory.
    func region(of id: String) -> String
    /// Places a tenant about to be created in `region` ("" for the data directory).
    /// - Throws: INVALID for an unknown region.
    func place(id: String, region: String) throws
    /// Forgets where a deleted or detached tenant was.
    func forget(id: String)
    /// Moves a closed tenant's directory to `region`'s root: copied, synced, renamed into place,
    /// then the source removed; after a crash at any step the start-up finishes or undoes it.
    func move(id: String, to region: String) async throws
    /// The path TENANT SNAPSHOT writes tenant `id` to under `destination`, refused when it is
    /// not an absolute path to a directory or when the snapshot exists already.
    func snapshotTarget(id: String, destination: String) throws -> String
    /// Writes the index of every tenant (their metadata), replacing the last: the registry keeps
    /// one only for tenants in directories of their own (a shared log is its own index).
    func saveIndex(_ catalog: Catalog) throws
}

extension IsolationStrategy {
    /// The store of this strategy.
    func makeStore(configuration: EngineConfiguration, logger: Logger) -> any TenantStore {
        switch self {
        case .database: DirectoryStore(configuration: configuration, logger: logger)
        case .schema: SharedLogStore(configuration: configuration, logger: logger, oneExecutor: false)
        case .shared: SharedLogStore(configuration: configuration, logger: logger, oneExecutor: true)
        }
    }

    /// A data directory keeps the strategy it was made with; `<data>/strategy` records it, and
    /// without it the layout tells (tenant directories, or the shared log).
    /// - Throws: when the directory was made under another strategy.
    func claim(_ layout: DataLayout, fileSystem: any WALFileSystem) throws {
        let path = layout.strategyFile
        let wanted = self.rawValue
        let recorded =
            fileSystem.exists(path)
            ? String(decoding: try fileSystem.readFile(path), as: UTF8.self).trimmingCharacters(
                in: .whitespacesAndNewlines
            )
            : nil
        // A file that names no strategy is damaged: the layout decides, as if it were missing.
        if let found = recorded, IsolationStrategy(rawValue: found) != nil {
            guard found == wanted else {
                throw TenantError(
                    .refused,
                    "data directory \(layout.root) was created with TENANT_ISOLATION_STRATEGY=\(found); "
                        + "it cannot be served as \(wanted). Start with TENANT_ISOLATION_STRATEGY=\(found), "
                        + "or use another data directory."
                )
            }
            return
        }
        let listing = try fileSystem.listDirectory(layout.root)
        let hasTenantDirectories = listing.contains { $0.hasPrefix(layout.prefix) }
        let hasSharedLog = listing.contains(DataLayout.sharedName)
        if (hasTenantDirectories && self != .database) || (hasSharedLog && self == .database) {
            throw TenantError(
                .refused,
                "data directory \(layout.root) holds data of another isolation strategy "
                    + "than \(wanted); start with the strategy it was created with"
            )
        }
        try fileSystem.writeFileAtomically(path, contents: Array((wanted + "\n").utf8))
    }
}
