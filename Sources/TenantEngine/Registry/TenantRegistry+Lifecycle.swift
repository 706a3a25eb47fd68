import Logging
import Synchronization
import WAL

extension TenantRegistry {
    /// Creates a tenant with its owner, durably, then activates it.
    /// - Parameters:
    ///   - name: the display name.
    ///   - subdomain: a valid, unused subdomain.
    ///   - plan: the plan; nil takes the default plan.
    ///   - owner: the owner's user name.
    /// - Returns: the metadata, and the owner's token (shown this once).
    /// - Throws: ``TenantError`` (INVALID, EXISTS, IOERR).
    public func createTenant(
        name: String,
        subdomain: String,
        plan: Plan?,
        owner: String,
        region: String = ""
    ) async throws -> CreatedTenant {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        if let problem = Names.subdomainProblem(subdomain) { throw TenantError.invalid(problem) }
        var id = Tokens.newTenantID()
        while self.catalog.entries[id] != nil || self.claims.holds(id: id) || self.catalog.idBySubdomain[id] != nil
            || id == subdomain || self.migrations.departure(id) != nil
        {
            id = Tokens.newTenantID()
        }
        return try await self.create(
            id: id,
            name: name,
            subdomain: subdomain,
            plan: plan,
            owner: owner,
            region: region
        )
    }

    /// TENANT SIGNUP: a self-service creation, when `TENANT_SELF_SIGNUP=true`, limited per client
    /// address (an IPv6 /64 is one), for all clients together, and by `TENANT_MAX_TENANTS`.
    /// - Throws: NOPERM when self-signup is off; QUOTA past a rate or the cap; as
    ///   ``createTenant(name:subdomain:plan:owner:)``.
    public func signup(
        name: String,
        subdomain: String,
        owner: String,
        clientAddress: String
    ) async throws
        -> CreatedTenant
    {
        guard self.configuration.selfSignup else {
            throw TenantError.noPermission("self-signup is disabled (TENANT_SELF_SIGNUP=false)")
        }
        try self.checkTenantCap()
        let now = self.configuration.clock()
        try self.signups.admit(address: clientAddress, now: now)
        return try await self.createTenant(name: name, subdomain: subdomain, plan: nil, owner: owner)
    }

    /// Creates tenant `id`: durably written (a staging directory renamed into place, or records in
    /// the shared log), put in the catalog, activated.
    func create(
        id: String,
        name: String,
        subdomain: String,
        plan: Plan?,
        owner: String?,
        region: String = ""
    ) async throws -> CreatedTenant {
        guard Names.isValidTenantName(name) else {
            throw TenantError.invalid("tenant name must be 1-200 bytes of UTF-8 without control characters")
        }
        if let owner, !Names.isValidUserName(owner) {
            throw TenantError.invalid("user name must be 1-64 bytes of [A-Za-z0-9._-] without '..'")
        }
        if !subdomain.isEmpty {
            // A migrated tenant's subdomain stays its own: the router sends it to the destination.
            guard self.catalog.idBySubdomain[subdomain] == nil, !self.claims.holds(subdomain: subdomain),
                self.migrations.departedTenant(subdomain: subdomain) == nil
            else {
                throw TenantError(.alreadyExists, "subdomain '\(subdomain)' is already taken")
            }
            guard self.catalog.entries[subdomain] == nil || subdomain == id, !self.claims.holds(id: subdomain) else {
                // The same words as a taken subdomain: a signup learns nothing of tenant ids.
                throw TenantError(.alreadyExists, "subdomain '\(subdomain)' is already taken")
            }
        }
        guard self.catalog.entries[id] == nil, !self.claims.holds(id: id), self.catalog.idBySubdomain[id] == nil,
            self.migrations.departure(id) == nil, !self.claims.holds(subdomain: id),
            self.nameClash(id: id, subdomain: subdomain) == nil
        else {
            throw TenantError(.alreadyExists, "tenant id '\(id)' is already taken")
        }
        try self.checkTenantCap()
        self.claims.claim(id: id, subdomain: subdomain)
        defer { self.claims.release(id: id, subdomain: subdomain) }
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
        let ownerUser = owner.map { User(name: $0, role: .owner, tokenHash: Tokens.hash(token), joinedAt: now) }
        if let directories = self.store.directories {
            try directories.place(id: id, region: region)
        } else if !region.isEmpty {
            throw TenantError.invalid("regions are for the database strategy")
        }
        let tenant: Tenant
        do {
            tenant = try await self.store.create(metadata: metadata, owner: ownerUser, context: self.tenantContext)
        } catch {
            self.store.directories?.forget(id: id)
            throw error
        }
        if case .stopped = self.state {
            // Shut down while it was made: nothing may stay open after shutdown() returned.
            await tenant.close()
            throw TenantError(.unavailable, "server is stopping")
        }
        self.catalog.insert(metadata)
        self.catalog.setCredentials(Set(ownerUser.map { [CredentialKey($0)] } ?? []), for: id)
        self.saveCatalog()
        self.active[id] = tenant
        self.logger.info(
            "tenant created",
            metadata: [
                "event": "tenant_created", "tenant_id": "\(id)", "subdomain": "\(subdomain)", "region": "\(region)",
            ]
        )
        return CreatedTenant(metadata: metadata, owner: owner ?? "", ownerToken: owner == nil ? "" : token)
    }

    /// Refuses a creation at `TENANT_MAX_TENANTS` (creations in progress count).
    func checkTenantCap() throws {
        let cap = self.configuration.maxTenants
        let count = self.catalog.entries.count + self.claims.ids.count
        if cap > 0 && count >= cap {
            throw TenantError(.quotaExceeded, "tenants \(count)/\(cap)")
        }
    }

    /// TENANT DELETE: removes the tenant durably (as its store does: a directory renamed into the
    /// trash, or a deletion record in the shared log) and closes it.
    public func deleteTenant(id: String) async throws {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard self.catalog.entries[id] != nil else { throw TenantError.notFound("no tenant '\(id)'") }
        guard !self.claims.holds(id: id) else { throw TenantError(.unavailable, "tenant '\(id)' is busy; retry") }
        self.claims.claim(id: id)
        defer { self.claims.release(id: id) }
        let tenant = try? await self.activate(id: id)
        do {
            try await self.store.delete(id: id, tenant: tenant)
        } catch let failure as DeletionFailure {
            if failure.removed {
                self.active[id] = nil
                self.catalog.remove(id: id)
                self.counters.remove(id: id)
                self.store.directories?.forget(id: id)
                self.saveCatalog()
            } else if tenant?.isClosed ?? true {
                // Still there and whole, but closed: the next use opens it again.
                self.active[id] = nil
            }
            throw failure.error
        }
        self.active[id] = nil
        self.catalog.remove(id: id)
        self.counters.remove(id: id)
        self.store.directories?.forget(id: id)
        self.saveCatalog()
        self.logger.notice("tenant deleted", metadata: ["event": "tenant_deleted", "tenant_id": "\(id)"])
    }

    /// TENANT REOPEN: closes a tenant and opens it again from its directory, as a restart would:
    /// a tenant that turned read-only after a disk fault (IOERR) comes back to service once the
    /// fault is cleared, with everything acknowledged. `database` strategy.
    /// - Throws: NOTFOUND for an unknown tenant; IOERR when it still does not open.
    public func reopenTenant(id: String) async throws {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard self.catalog.entries[id] != nil else { throw TenantError.notFound("no tenant '\(id)'") }
        _ = try self.directories(for: "REOPEN")
        // A migration, move or detach in flight owns the tenant until it ends.
        guard !self.claims.holds(id: id), !self.migrations.isUndecided(id) else {
            throw TenantError(.unavailable, "tenant '\(id)' is busy; retry")
        }
        if let tenant = self.active.removeValue(forKey: id) { await tenant.close() }
        _ = try await self.activate(id: id)
        self.logger.info("tenant reopened", metadata: ["tenant_id": "\(id)"])
    }

    /// TENANT SNAPSHOT: a consistent copy of the tenant's directory, `<destination>/<prefix><id>`.
    /// - Parameter destination: an absolute path to an existing directory, without `..`.
    /// - Returns: the snapshot's path and the lsn it ends at.
    public func snapshotTenant(id: String, destination: String) async throws -> (path: String, lsn: UInt64) {
        let directories = try self.directories(for: "SNAPSHOT")
        let target = try await runBlocking { try directories.snapshotTarget(id: id, destination: destination) }
        let tenant = try await self.tenant(id: id)
        tenant.retain()
        defer { tenant.release() }
        let lsn = try await tenant.snapshot(to: target)
        self.logger.info(
            "tenant snapshot written",
            metadata: ["tenant_id": "\(id)", "path": "\(target)", "lsn": "\(lsn)"]
        )
        return (target, lsn)
    }

    /// TENANT ATTACH: serves a tenant directory placed in the data directory (a snapshot or a
    /// copy from another server, named `<prefix><id>`).
    /// - Throws: EXISTS when the id or its subdomain is served already; NOTFOUND without the
    ///   directory; IOERR when it does not recover.
    public func attachTenant(id: String) async throws -> TenantMetadata {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        let directories = try self.directories(for: "ATTACH")
        guard Names.isValidTenantID(id) else { throw TenantError.invalid("tenant id must be 1-50 bytes of [a-z0-9-]") }
        guard self.catalog.entries[id] == nil, !self.claims.holds(id: id) else {
            throw TenantError(.alreadyExists, "tenant '\(id)' is already served")
        }
        guard directories.hasDirectory(id: id) else {
            throw TenantError.notFound("no directory \(self.store.layout.tenantDirectory(id))")
        }
        switch Departure.probe(id: nil, directory: self.store.layout.tenantDirectory(id), committed: false) {
        case .absent:
            break
        case .departed(let departure):
            throw TenantError.invalid(
                "\(self.store.layout.tenantDirectory(id)) was handed to \(departure.target) (its MIGRATED_TO file): remove that file first to serve it here"
            )
        case .unreadable(let problem):
            throw TenantError.invalid("its migration marker cannot be read: \(problem)")
        }
        self.claims.claim(id: id)
        defer { self.claims.release(id: id) }
        let tenant = try await self.activate(id: id)
        let metadata = await tenant.metadata
        if let other = self.catalog.idBySubdomain[metadata.subdomain], other != id {
            self.active[id] = nil
            await tenant.close(checkpoint: false)
            throw TenantError(.alreadyExists, "subdomain '\(metadata.subdomain)' is served by tenant \(other)")
        }
        self.catalog.insert(metadata)
        self.forgetDeparture(id)
        self.saveCatalog()
        self.logger.notice("tenant attached", metadata: ["event": "tenant_attached", "tenant_id": "\(id)"])
        return metadata
    }

    /// TENANT DETACH: flushes (with a checkpoint), closes and forgets a tenant, leaving its
    /// directory in place for the operator to move. A restart would serve it again.
    public func detachTenant(id: String) async throws {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        let directories = try self.directories(for: "DETACH")
        guard self.catalog.entries[id] != nil else { throw TenantError.notFound("no tenant '\(id)'") }
        guard !self.claims.holds(id: id) else { throw TenantError(.unavailable, "tenant '\(id)' is busy; retry") }
        self.claims.claim(id: id)
        defer { self.claims.release(id: id) }
        if let tenant = self.active.removeValue(forKey: id) { await tenant.close() }
        self.catalog.remove(id: id)
        self.counters.remove(id: id)
        directories.forget(id: id)
        self.saveCatalog()
        await self.flushCatalog()
        self.logger.notice("tenant detached", metadata: ["event": "tenant_detached", "tenant_id": "\(id)"])
    }

    /// The metadata of every tenant, by id, from the catalog (no tenant is activated).
    public func listTenants() -> [TenantMetadata] {
        self.catalog.sortedIDs().compactMap { self.catalog.entries[$0] }
    }

    /// One page of tenants after `cursor` (an id, or "0" to start).
    /// - Returns: the page and the next cursor ("0" when done).
    public func listTenants(after cursor: String, count: Int) -> (tenants: [TenantMetadata], next: String) {
        let ids = self.catalog.sortedIDs()
        var low = 0
        if cursor != "0" {
            var high = ids.count
            while low < high {
                let middle = (low + high) / 2
                if ids[middle] <= cursor { low = middle + 1 } else { high = middle }
            }
        }
        let end = min(ids.count, low + max(1, count))
        let page = ids[low..<end].compactMap { self.catalog.entries[$0] }
        return (page, end < ids.count ? ids[end - 1] : "0")
    }

    /// The number of tenants.
    public var tenantCount: Int { self.catalog.entries.count }

    /// The region tenant `id` lives in ("" for the data directory).
    public nonisolated func region(of id: String) -> String {
        self.store.directories?.region(of: id) ?? ""
    }

    /// Whether tenants have directories of their own (the `database` strategy): regions,
    /// backups, snapshots, moves and migrations need them.
    public nonisolated var hasTenantDirectories: Bool { self.store.directories != nil }

    /// The store's tenant directories, for a command that needs them.
    /// - Throws: INVALID under a strategy whose tenants have none.
    nonisolated func directories(for command: String) throws -> any TenantDirectories {
        guard let directories = self.store.directories else {
            throw TenantError.invalid(
                "TENANT \(command) is for the database strategy; under \(self.configuration.isolation.rawValue) "
                    + "every tenant is in the one shared log"
            )
        }
        return directories
    }

    /// The configured regions' names, sorted.
    public nonisolated var regionNames: [String] {
        self.configuration.regions.keys.sorted()
    }

    /// TENANT MOVE <id> REGION <name>: moves the tenant's directory to another region's root while
    /// the server runs. Its commands wait meanwhile (those already running on it finish first, or
    /// get LOADING and retry): the tenant is closed (every acknowledged write is in its log),
    /// its directory copied and synced, renamed into place in the new root, the source removed,
    /// and the tenant opened from there. A failure before the copy is in place leaves it where it
    /// was. `database` strategy.
    /// - Parameter region: a configured region, or "" for the data directory.
    /// - Throws: INVALID for an unknown region or another strategy; NOTFOUND; IOERR.
    public func moveTenant(id: String, region: String) async throws {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard let directories = self.store.directories else {
            throw TenantError.invalid("regions are for the database strategy")
        }
        guard region.isEmpty || self.configuration.regions[region] != nil else {
            throw TenantError.invalid(
                "unknown region '\(region.prefix(32))'; regions: "
                    + (self.regionNames.isEmpty ? "none (TENANT_REGIONS)" : self.regionNames.joined(separator: ", "))
            )
        }
        guard self.catalog.entries[id] != nil else { throw TenantError.notFound("no tenant '\(id)'") }
        let from = directories.region(of: id)
        guard from != region else { return }
        guard !self.claims.holds(id: id), self.activating.running(id) == nil else {
            throw TenantError(.unavailable, "tenant '\(id)' is busy; retry")
        }
        self.claims.claim(id: id)
        defer { self.claims.release(id: id) }
        let current = self.active.removeValue(forKey: id)
        let store = self.store
        let context = self.tenantContext
        // Requests for the tenant join this task (as they join an activation) and get the tenant
        // opened where it is once the move ends: the new root, or the old one if the move failed.
        let failure = MoveFailure()
        let task = self.activating.start(id) {
            if let current { await current.close() }
            do {
                try await directories.move(id: id, to: region)
            } catch {
                failure.error.withLock { $0 = error }
            }
            return try await store.open(id: id, context: context)
        }
        defer { self.activating.finish(id, task) }
        let tenant = try await task.value
        if case .stopped = self.state {
            // Shut down while it moved: nothing may stay open after shutdown() returned.
            await tenant.close()
            throw TenantError(.unavailable, "server is stopping")
        }
        self.active[id] = tenant
        if let error = failure.error.withLock({ $0 }) { throw error }
        self.logger.notice(
            "tenant moved",
            metadata: [
                "event": "tenant_moved", "tenant_id": "\(id)", "from": "\(from.isEmpty ? "-" : from)",
                "to": "\(region.isEmpty ? "-" : region)",
            ]
        )
    }
}

/// Why a move failed, for the command that asked for it (requests that joined it get the tenant
/// back where it was).
final class MoveFailure: Sendable {
    let error = Mutex<(any Error)?>(nil)
}
