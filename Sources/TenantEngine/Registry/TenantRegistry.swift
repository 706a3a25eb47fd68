import Foundation
import Logging
import Metrics
import Synchronization
import TenantMetrics
import WAL

/// What TENANT CREATE and TENANT SIGNUP return.
public struct CreatedTenant: Sendable {
    public var metadata: TenantMetadata
    public var owner: String
    public var ownerToken: String
}

/// Knows every tenant, resolves tenant references and activates tenants on first use. How
/// tenants are kept on disk is its store's business (``TenantStore``, one per isolation strategy).
public actor TenantRegistry {
    enum State {
        case initial
        case running
        case stopped
    }

    /// The engine's settings.
    public nonisolated let configuration: EngineConfiguration
    let logger: Logger
    var state: State = .initial
    var catalog = Catalog() {
        didSet { self.publishTenantCounts() }
    }
    var active: OpenTenants {
        didSet { self.publishTenantCounts() }
    }
    /// The open tenants, readable without a hop (``OpenTenants``): the registry's own, shared.
    public nonisolated let openTenants: OpenTenants
    /// Open and known-but-closed tenants, for the metrics endpoint and INFO.
    static let activeTenants = Gauge(label: MetricFamily.tenantsActive.name)
    static let passiveTenants = Gauge(label: MetricFamily.tenantsPassive.name)
    /// The same, readable without a hop (INFO).
    public nonisolated let tenantCounts = Atomic<Int64>(0)
    public nonisolated let activeTenantCount = Atomic<Int64>(0)

    private func publishTenantCounts() {
        let known = Int64(self.catalog.entries.count)
        let active = Int64(self.active.count)
        Self.activeTenants.record(active)
        Self.passiveTenants.record(max(0, known - active))
        self.tenantCounts.store(known, ordering: .relaxed)
        self.activeTenantCount.store(active, ordering: .relaxed)
    }
    var activating = InFlight<Tenant>()
    /// Auto-provisioned creations in progress, so concurrent references wait for them.
    var provisioning = InFlight<Void>()
    /// Ids and subdomains held by creations, deletions and moves in flight.
    var claims = Claims()
    var adminTokenHash: [UInt8] = []
    /// The operator token itself: a migration authenticates with it at the destination.
    var adminToken = ""
    /// Every migration this server is part of, leaving or arriving: the source's departures
    /// (answered MIGRATED) and the destination's arrivals, with their state machines.
    var migrations = MigrationLedger()
    /// The tenants refused for a name clash, with the tenant they clash with (start-up's pass).
    var clashes: [String: String] = [:]
    /// How the registry reaches other servers (set by the server).
    var migrationPeers: MigrationPeerFactory?
    /// Hand-overs whose destination has not confirmed yet, asked again in the background.
    var commitRetries: [String: Task<Void, Never>] = [:]
    /// Told when a tenant is handed over.
    public nonisolated let migrationEvents = MigrationObservers()
    /// The background write of the catalog file, and whether the catalog changed since it began.
    var catalogWriter: Task<Void, Never>?
    var catalogDirty = false
    var catalogSaved = true
    /// The credential changes since the catalog file was written (`database` strategy).
    let credentialJournal: CredentialJournal?
    /// The next catalog write starts the credential journal again (``CredentialJournal``).
    var compactionRequested = false
    var signups: SignupGate
    /// Where tenants are kept: the isolation strategy's store.
    let store: any TenantStore
    /// The loop that closes idle tenants.
    var passivation = PassivationLoop()
    /// The memory budget every tenant's messages share (`--maxmemory`); nil when unlimited.
    public nonisolated let memory: MemoryBudget?
    /// Every tenant's usage counters, for the metrics and INFO.
    public nonisolated let counters = TenantCounterBook()

    /// Creates a registry; ``bootstrap()`` makes it ready.
    public init(configuration: EngineConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        let open = OpenTenants()
        self.active = open
        self.openTenants = open
        self.memory = configuration.maxMemory > 0 ? MemoryBudget(maxMemory: configuration.maxMemory) : nil
        self.store = configuration.isolation.makeStore(configuration: configuration, logger: logger)
        self.credentialJournal =
            self.store.directories != nil
            ? CredentialJournal(catalogDirectory: self.store.layout.catalogDirectory, sync: configuration.fsync != .no)
            : nil
        self.signups = SignupGate(
            perMinute: configuration.signupsPerMinute,
            perMinuteTotal: configuration.signupsPerMinuteTotal
        )
    }

    /// Prepares the data directory: the strategy check, the operator token, the tenants (the
    /// catalog checked against the tenant directories, or the shared log replayed), and the
    /// tenant `default` in single-tenant mode.
    /// - Throws: when the data directory cannot be used or was made under another strategy.
    public func bootstrap() async throws {
        guard case .initial = self.state else { return }
        let configuration = self.configuration
        let layout = self.store.layout
        let token = try await runBlocking {
            let fileSystem = configuration.fileSystem
            _ = try fileSystem.makeDirectory(layout.root)
            try configuration.isolation.claim(layout, fileSystem: fileSystem)
            return try Self.loadOrCreateAdminToken(configuration, layout: layout)
        }
        self.adminTokenHash = Tokens.hash(token)
        self.adminToken = token
        switch try await self.store.load(context: self.tenantContext) {
        case .onDisk(let ids, let index):
            try await self.reconcileCatalog(onDisk: ids, index: index)
        case .resident(let tenants):
            for tenant in tenants {
                self.active[tenant.id] = tenant
                self.catalog.insert(await tenant.metadata)
                self.catalog.setCredentials(await tenant.credentialKeys, for: tenant.id)
            }
        }
        self.loadDepartures()
        self.loadIncoming()
        self.state = .running
        if self.store.passivates && configuration.idleSeconds > 0 {
            self.passivation.start(idleSeconds: configuration.idleSeconds) { [weak self] in
                guard let self else { return false }
                await self.passivateIdleTenants()
                return true
            }
        }
        if !configuration.multiTenancy && self.catalog.entries[EngineConfiguration.defaultTenantID] == nil {
            _ = try await self.create(
                id: EngineConfiguration.defaultTenantID,
                name: "default",
                subdomain: "default",
                plan: nil,
                owner: nil
            )
        }
    }

    /// What the store builds tenants with.
    nonisolated var tenantContext: TenantContext {
        TenantContext(
            configuration: self.configuration,
            logger: self.logger,
            onMetadataChange: self.metadataObserver(),
            onCredentialChange: { [weak self] id, change in try await self?.credentialsChanged(id, change) },
            memory: self.memory,
            counters: self.counters
        )
    }

    private static func loadOrCreateAdminToken(
        _ configuration: EngineConfiguration,
        layout: DataLayout
    ) throws -> String {
        let minimum = EngineConfiguration.minimumAdminTokenLength
        if let token = configuration.adminToken, !token.isEmpty {
            guard token.count >= minimum else {
                throw TenantError(.refused, "the operator token must be at least \(minimum) characters")
            }
            return token
        }
        let fileSystem = configuration.fileSystem
        let path = layout.adminTokenFile
        if fileSystem.exists(path) {
            let text = String(decoding: try fileSystem.readFile(path), as: UTF8.self)
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !token.isEmpty {
                guard token.count >= minimum else {
                    throw TenantError(
                        .refused,
                        "the operator token in \(path) is shorter than \(minimum) characters; replace it "
                            + "(openssl rand -hex 32 > \(path)) or delete it to have a new one made"
                    )
                }
                return token
            }
        }
        let token = Tokens.generate()
        try fileSystem.writeFileAtomically(path, contents: Array((token + "\n").utf8))
        return token
    }

    /// Checks the operator token in constant time.
    public func isOperatorToken(_ token: String) -> Bool {
        Tokens.constantTimeEqual(Tokens.hash(token), self.adminTokenHash)
    }

    /// The tenant id a reference names, in the forms `TENANT_ID_SOURCE` accepts: an id (`header`),
    /// a subdomain or a host name by its first label (`subdomain`). `www`, `api`, `admin` and the
    /// other reserved labels never name a tenant.
    public func resolve(_ reference: String) -> String? {
        self.resolve(reference, sources: self.configuration.idSources)
    }

    /// ``resolve(_:)`` with every form accepted, for the operator's TENANT commands.
    public func resolveAny(_ reference: String) -> String? {
        self.resolve(reference, sources: Set(TenantIDSource.allCases))
    }

    private func resolve(_ reference: String, sources: Set<TenantIDSource>) -> String? {
        let reference = reference.lowercased()
        if sources.contains(.header), self.catalog.entries[reference] != nil { return reference }
        if sources.contains(.subdomain) {
            if let id = self.catalog.idBySubdomain[reference] { return id }
            if let dot = reference.firstIndex(of: ".") {
                let label = String(reference[..<dot])
                guard !Names.reservedSubdomains.contains(label) else { return nil }
                if let id = self.catalog.idBySubdomain[label] { return id }
                // A tenant handed to another server: named still, so that it is answered MIGRATED.
                return self.migrations.departedTenant(subdomain: label)
            }
        }
        guard self.migrations.hasDepartures else { return nil }
        if sources.contains(.header), self.migrations.departure(reference) != nil { return reference }
        return sources.contains(.subdomain) ? self.migrations.departedTenant(subdomain: reference) : nil
    }

    /// The tenant of an id, activated if needed.
    /// - Throws: NOTFOUND for an unknown id; IOERR when its directory does not recover.
    public func tenant(id: String) async throws -> Tenant {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard self.catalog.entries[id] != nil else {
            if let departure = self.migrations.departure(id) { throw TenantError.migrated(id, departure.target) }
            throw TenantError.notFound("no tenant '\(id)'")
        }
        guard !self.migrations.isUndecided(id) else {
            throw TenantError.ioError("tenant '\(id)' is between servers after a disk fault; see the log")
        }
        return try await self.activate(id: id)
    }

    /// The tenant of an id for the operator: with `TENANT_AUTO_PROVISION=true` an unknown,
    /// well-formed id is created on the default plan.
    public func tenantForOperator(id: String) async throws -> Tenant {
        if self.catalog.entries[id] == nil && self.configuration.autoProvision && Names.isValidTenantID(id) {
            if let provisioning = self.provisioning.running(id) {
                // Another connection is creating it: wait for that creation rather than fail.
                _ = try? await provisioning.value
            } else {
                let subdomain =
                    Names.subdomainProblem(id) == nil && self.catalog.idBySubdomain[id] == nil
                        && !self.claims.holds(subdomain: id) ? id : ""
                let task = self.provisioning.start(id) {
                    _ = try await self.create(id: id, name: id, subdomain: subdomain, plan: nil, owner: nil)
                }
                defer { self.provisioning.finish(id, task) }
                do {
                    try await task.value
                } catch let error as TenantError where error.kind == .alreadyExists {
                    // Created meanwhile by another path.
                }
            }
        }
        return try await self.tenant(id: id)
    }

    /// Activates a tenant once, however many ask at the same time.
    func activate(id: String) async throws -> Tenant {
        if let tenant = self.active[id] { return tenant }
        if let task = self.activating.running(id) { return try await task.value }
        let store = self.store
        let context = self.tenantContext
        let task = self.activating.start(id) { try await store.open(id: id, context: context) }
        defer { self.activating.finish(id, task) }
        let tenant = try await task.value
        if case .stopped = self.state {
            // Shut down while it opened: nothing may stay open after shutdown() returned.
            await tenant.close()
            throw TenantError(.unavailable, "server is stopping")
        }
        let metadata = await tenant.metadata
        if self.catalog.entries[id]?.subdomain != metadata.subdomain,
            let clash = self.nameClash(id: id, subdomain: metadata.subdomain)
        {
            // A directory placed by hand (ATTACH, start-up) or arrived whose id or subdomain is
            // another tenant's: never served, so that it cannot take over the other's name.
            await tenant.close(checkpoint: false)
            throw TenantError(.alreadyExists, clash)
        }
        self.active[id] = tenant
        let keys = await tenant.credentialKeys
        if self.catalog.entries[id] != metadata || self.catalog.credentials[id] != keys {
            // The tenant's own log is the truth; the catalog is a cache of it.
            self.catalog.insert(metadata)
            self.catalog.setCredentials(keys, for: id)
            if case .running = self.state { self.saveCatalog() }
        }
        return tenant
    }

    /// Why tenant `id` with `subdomain` may not be served beside the others: ids and subdomains
    /// are one namespace (a reference resolves to one tenant whatever its form), so neither may
    /// equal another tenant's id or subdomain, here, leaving, or being created or received.
    func nameClash(id: String, subdomain: String) -> String? {
        for name in [id, subdomain] where !name.isEmpty {
            if let other = self.catalog.otherTenant(named: name, besides: id) {
                if case .initial = self.state { self.clashes[id] = other }
                return "'\(name)' names tenant \(other) here already"
            }
            if name != id, self.migrations.departure(name) != nil {
                return "'\(name)' names a tenant that left this server"
            }
            if let other = self.migrations.departedTenant(subdomain: name), other != id {
                return "'\(name)' names a tenant that left this server"
            }
            if let other = self.migrations.arrival(holding: name, besides: id) {
                return "'\(name)' names tenant \(other), arriving here"
            }
            if name != id, self.migrations.arrival(name) != nil {
                return "'\(name)' names a tenant arriving here"
            }
        }
        return nil
    }

    /// Whether a user's token may be checked by tenant `id` (opening it): false when the
    /// catalog's keys say it is wrong, so that a wrong AUTH opens nothing. A tenant whose keys
    /// are not known (one that failed to open at start-up) admits no one until the operator has
    /// opened it (TENANT REOPEN or GET), which learns them.
    public func mayAuthenticate(id: String, user: String, tokenHash: [UInt8]) -> Bool {
        if self.active[id] != nil { return true }
        if let departure = self.migrations.departure(id) {
            // A handed-over tenant's address is told only to its own users.
            return departure.credentials?.contains(CredentialKey(user: user, tokenHash: tokenHash)) ?? false
        }
        return self.catalog.admits(CredentialKey(user: user, tokenHash: tokenHash), to: id) ?? false
    }

    /// Closes every tenant unused for `TENANT_IDLE_SECONDS` that no connection holds (its
    /// checkpoint is written, its files closed); the next use opens it again.
    /// - Returns: how many tenants were closed.
    @discardableResult
    public func passivateIdleTenants() async -> Int {
        guard case .running = self.state, self.store.passivates else { return 0 }
        let now = self.configuration.clock()
        let idle = Int64(self.configuration.idleSeconds) * 1000
        var closed = 0
        for (id, tenant) in self.active.all where self.activating.running(id) == nil && !self.claims.holds(id: id) {
            guard await tenant.isIdle(now: now, idle: idle) else { continue }
            // Re-checked after the await: a connection may have taken it meanwhile.
            guard self.active[id] === tenant, tenant.leaseCount <= 0, !self.claims.holds(id: id) else { continue }
            self.active[id] = nil
            // Claimed while it closes: a MOVE, DELETE or DETACH waits for its checkpoint to end.
            self.claims.claim(id: id)
            await tenant.close()
            self.claims.release(id: id)
            closed += 1
        }
        if closed > 0 { self.logger.debug("passivated \(closed) idle tenants") }
        return closed
    }

    /// Checkpoints every open tenant now (the whole shared log under `schema` and `shared`), so
    /// that the next start replays nothing; tests, benchmarks and backups use it.
    public func checkpointAll() async throws {
        try await self.store.checkpoint(open: Array(self.active.values))
    }

    /// The number of tenants open now.
    public var activeCount: Int { self.active.count }

    /// Flushes and closes every tenant's log (and the shared log), writing checkpoints unless told
    /// not to; the registry serves nothing more.
    public func shutdown(checkpoint: Bool = true) async {
        self.state = .stopped
        self.passivation.stop()
        for task in self.commitRetries.values { task.cancel() }
        for task in self.activating.all { _ = try? await task.value }
        await self.store.prepareShutdown(checkpoint: checkpoint)
        let tenants = self.active.values
        self.active.removeAll()
        await withTaskGroup(of: Void.self) { group in
            for tenant in tenants { group.addTask { await tenant.close(checkpoint: checkpoint) } }
        }
        if let journal = self.credentialJournal, journal.bytes > 0 || journal.hasFiles {
            // Leave the catalog whole and the journal empty for the next start.
            self.compactionRequested = true
            self.saveCatalog()
        }
        await self.flushCatalog()
        self.credentialJournal?.close()
        await self.store.close()
    }
}
