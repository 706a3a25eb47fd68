import Foundation
import Logging
import WAL

/// What TENANT CREATE returns.
public struct CreatedTenant: Sendable {
    public var metadata: TenantMetadata
    public var owner: String
    public var ownerToken: String
}

/// Knows every tenant of the data directory, resolves tenant references and activates tenants on first use.
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
    var catalog = Catalog()
    var active: [String: Tenant] = [:]
    var activating: [String: Task<Tenant, any Error>] = [:]
    /// Subdomains and ids claimed by creations in progress.
    var claimedSubdomains: Set<String> = []
    var claimedIDs: Set<String> = []
    var adminTokenHash: [UInt8] = []

    /// Creates a registry; ``bootstrap()`` makes it ready.
    public init(configuration: EngineConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Prepares the data directory: the operator token, the catalog checked against the tenant directories.
    /// - Throws: when the data directory cannot be used.
    public func bootstrap() async throws {
        guard case .initial = self.state else { return }
        let configuration = self.configuration
        let data = configuration.dataDirectory
        let (token, listing) = try await runBlocking {
            try POSIXFile.makeDirectory(data)
            let token = try Self.loadOrCreateAdminToken(configuration)
            return (token, try POSIXFile.listDirectory(data))
        }
        self.adminTokenHash = Tokens.hash(token)
        try await self.reconcileCatalog(listing: listing)
        self.state = .running
    }

    private static func loadOrCreateAdminToken(_ configuration: EngineConfiguration) throws -> String {
        if let token = configuration.adminToken, !token.isEmpty { return token }
        let path = configuration.dataDirectory + "/admin.token"
        if POSIXFile.exists(path) {
            let text = String(decoding: try POSIXFile.readAll(path), as: UTF8.self)
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !token.isEmpty { return token }
        }
        let token = Tokens.generate()
        try POSIXFile.writeFileAtomically(path, contents: Array((token + "\n").utf8), mode: 0o600)
        return token
    }

    /// Loads the catalog and makes it agree with the tenant directories on disk.
    private func reconcileCatalog(listing: [String]) async throws {
        let data = self.configuration.dataDirectory
        let prefix = self.configuration.directoryPrefix
        var catalog = Catalog.load(from: data)
        var changed = catalog == nil
        var onDisk: Set<String> = []
        for name in listing where name.hasPrefix(prefix) {
            let id = String(name.dropFirst(prefix.count))
            if Names.isValidTenantID(id), POSIXFile.isDirectory(data + "/" + name) { onDisk.insert(id) }
        }
        for name in listing where name.hasPrefix(".creating-") {
            // A creation that crashed before its rename: never acknowledged, so never a tenant.
            try? FileManager.default.removeItem(atPath: data + "/" + name)
        }
        var rebuilt = catalog ?? Catalog()
        for id in rebuilt.entries.keys where !onDisk.contains(id) {
            rebuilt.remove(id: id)
            changed = true
        }
        for id in onDisk.sorted() where rebuilt.entries[id] == nil {
            do {
                let tenant = try await self.activate(id: id)
                let metadata = await tenant.metadata
                rebuilt.insert(.init(id: id, subdomain: metadata.subdomain, name: metadata.name))
                changed = true
            } catch {
                self.logger.error("tenant directory \(prefix)\(id) is not served: \(error)")
            }
        }
        catalog = rebuilt
        self.catalog = rebuilt
        if changed {
            let snapshot = rebuilt
            try await runBlocking { try snapshot.save(to: data) }
        }
    }

    /// Checks the operator token in constant time.
    public func isOperatorToken(_ token: String) -> Bool {
        Tokens.constantTimeEqual(Tokens.hash(token), self.adminTokenHash)
    }

    /// The tenant id a reference names: an id, a subdomain, or a host name by its first label.
    /// `www`, `api`, `admin` and the other reserved labels never name a tenant.
    public func resolve(_ reference: String) -> String? {
        let reference = reference.lowercased()
        if self.catalog.entries[reference] != nil { return reference }
        if let id = self.catalog.idBySubdomain[reference] { return id }
        if let dot = reference.firstIndex(of: ".") {
            let label = String(reference[..<dot])
            guard !Names.reservedSubdomains.contains(label) else { return nil }
            if let id = self.catalog.idBySubdomain[label] { return id }
            if self.catalog.entries[label] != nil { return label }
        }
        return nil
    }

    /// The tenant of an id, activated if needed.
    /// - Throws: NOTFOUND for an unknown id; IOERR when its directory does not recover.
    public func tenant(id: String) async throws -> Tenant {
        guard case .running = self.state else { throw TenantError(.loading, "server is starting or stopping") }
        guard self.catalog.entries[id] != nil else { throw TenantError.notFound("no tenant '\(id)'") }
        return try await self.activate(id: id)
    }

    /// Activates a tenant once, however many ask at the same time.
    func activate(id: String) async throws -> Tenant {
        if let tenant = self.active[id] { return tenant }
        if let task = self.activating[id] { return try await task.value }
        let path = self.configuration.tenantDirectory(id)
        let configuration = self.configuration
        let logger = self.logger
        let task = Task { try await Tenant.open(path: path, configuration: configuration, logger: logger) }
        self.activating[id] = task
        defer { self.activating[id] = nil }
        let tenant = try await task.value
        guard tenant.id == id else {
            await tenant.close()
            throw TenantError(.ioError, "directory \(path) holds tenant \(tenant.id), not \(id)")
        }
        if case .stopped = self.state {
            // Shut down while it opened: nothing may stay open after shutdown() returned.
            await tenant.close()
            throw TenantError(.loading, "server is stopping")
        }
        self.active[id] = tenant
        return tenant
    }

    /// Creates a tenant with its owner, durably, then activates it.
    /// - Parameters:
    ///   - name: the display name.
    ///   - subdomain: a valid, unused subdomain.
    ///   - plan: the plan; nil takes the default plan.
    ///   - owner: the owner's user name.
    /// - Returns: the metadata, and the owner's token (shown this once).
    /// - Throws: ``TenantError`` (INVALID, EXISTS, IOERR).
    public func createTenant(name: String, subdomain: String, plan: Plan?, owner: String) async throws -> CreatedTenant
    {
        guard case .running = self.state else { throw TenantError(.loading, "server is starting or stopping") }
        guard Names.isValidTenantName(name) else {
            throw TenantError.invalid("tenant name must be 1-200 bytes of UTF-8 without control characters")
        }
        if let problem = Names.subdomainProblem(subdomain) { throw TenantError.invalid(problem) }
        guard Names.isValidUserName(owner) else {
            throw TenantError.invalid("user name must be 1-64 bytes of [A-Za-z0-9._-]")
        }
        guard self.catalog.idBySubdomain[subdomain] == nil, !self.claimedSubdomains.contains(subdomain) else {
            throw TenantError(.exists, "subdomain '\(subdomain)' is already taken")
        }
        guard self.catalog.entries[subdomain] == nil else {
            throw TenantError(.exists, "subdomain '\(subdomain)' is another tenant's id")
        }
        var id = Tokens.newTenantID()
        while self.catalog.entries[id] != nil || self.claimedIDs.contains(id) || self.catalog.idBySubdomain[id] != nil {
            id = Tokens.newTenantID()
        }
        self.claimedSubdomains.insert(subdomain)
        self.claimedIDs.insert(id)
        defer {
            self.claimedSubdomains.remove(subdomain)
            self.claimedIDs.remove(id)
        }
        let plan = plan ?? self.configuration.defaultPlan
        let now = self.configuration.clock()
        let metadata = TenantMetadata(
            tenantID: id,
            name: name,
            subdomain: subdomain,
            plan: plan,
            limits: self.configuration.limits(for: plan),
            now: now
        )
        let token = Tokens.generate()
        let owner = User(name: owner, role: .owner, tokenHash: Tokens.hash(token), joinedAt: now)
        let configuration = self.configuration
        let data = configuration.dataDirectory
        let staging = data + "/.creating-" + id
        let final = configuration.tenantDirectory(id)
        do {
            try await runBlocking {
                try POSIXFile.makeDirectory(staging)
            }
            try await Tenant.initialize(path: staging, metadata: metadata, owner: owner, configuration: configuration)
            try await runBlocking {
                try POSIXFile.fsyncDirectory(staging)
                try POSIXFile.rename(staging, to: final)
                try POSIXFile.fsyncDirectory(data)
            }
        } catch {
            try? FileManager.default.removeItem(atPath: staging)
            throw TenantError.ioError("could not create the tenant directory: \(error)")
        }
        self.catalog.insert(.init(id: id, subdomain: subdomain, name: name))
        let snapshot = self.catalog
        try await runBlocking { try snapshot.save(to: data) }
        _ = try await self.activate(id: id)
        return CreatedTenant(metadata: metadata, owner: owner.name, ownerToken: token)
    }

    /// The ids of every tenant, sorted.
    public func tenantIDs() -> [String] {
        self.catalog.entries.keys.sorted()
    }

    /// Flushes and closes every active tenant's log; the registry serves nothing more.
    public func shutdown() async {
        self.state = .stopped
        for task in self.activating.values { _ = try? await task.value }
        let tenants = self.active.values
        self.active = [:]
        await withTaskGroup(of: Void.self) { group in
            for tenant in tenants { group.addTask { await tenant.close() } }
        }
    }
}
