import Logging
import WAL

/// `TENANT RECEIVE` on the destination: each call checks its transition in the ledger
/// (``MigrationLedger``), does its file work in the staging directory (``MigrationStaging``),
/// and keeps the registry's claims on the arriving id and subdomain.
extension TenantRegistry {
    /// The staging directories of arriving tenants.
    var staging: MigrationStaging {
        MigrationStaging(layout: self.store.layout, fileSystem: self.configuration.fileSystem)
    }

    private func checkReceiving(_ id: String) throws {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard self.store.directories != nil else {
            throw TenantError.invalid("TENANT RECEIVE is for the database strategy")
        }
        guard Names.isValidTenantID(id) else { throw TenantError.invalid("tenant id must be 1-50 bytes of [a-z0-9-]") }
        if let implied = self.impliedTenantID, implied != id {
            throw TenantError.invalid("single-tenant mode serves the tenant '\(implied)' only")
        }
    }

    private func checkMigrationID(_ migration: String) throws {
        guard !migration.isEmpty, migration.utf8.count <= 64,
            migration.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })
        else { throw TenantError.invalid("migration id must be 1-64 lowercase hex digits") }
    }

    /// TENANT RECEIVE … BEGIN: starts receiving tenant `id` (what arrived earlier for it stays,
    /// so a migration started again sends only what differs).
    /// - Returns: the files held for it.
    public func receiveBegin(id: String, migration: String) async throws -> [MigrationFile] {
        try self.checkReceiving(id)
        try self.checkMigrationID(migration)
        // First, so that no await falls between the checks below and the claim.
        await self.dropIdleIncoming()
        guard self.catalog.entries[id] == nil else {
            throw TenantError(.alreadyExists, "tenant '\(id)' is served here already")
        }
        guard !self.claims.holds(id: id) || self.migrations.arrival(id) != nil else {
            throw TenantError(.unavailable, "tenant '\(id)' is busy here; retry")
        }
        if let clash = self.nameClash(id: id, subdomain: "") { throw TenantError(.alreadyExists, clash) }
        let begun = try self.migrations.begin(
            id,
            migration: migration,
            now: self.configuration.clock(),
            limit: EngineConfiguration.maxIncomingMigrations
        )
        if begun.claimID { self.claims.claim(id: id) }
        if let subdomain = begun.releaseSubdomain { self.claims.release(subdomain: subdomain) }
        let staging = self.staging
        do {
            let files = try await runBlocking { try staging.open(id, migration: migration) }
            self.migrations.held(
                id,
                bytes: files.reduce(0) { $0 + Self.stagedSize(of: $1.path, bytes: $1.size) },
                files: files.count
            )
            return files
        } catch {
            self.endIncoming(id)
            // Staging BEGIN cannot read is dropped rather than left on disk uncounted.
            if !staging.isPrepared(id) { try? await runBlocking { try staging.drop(id) } }
            throw Self.ioError(error, "could not prepare \(staging.files(id).directory)")
        }
    }

    /// What a staged file counts against --migrate-staging-limit: its bytes, at least a block,
    /// and a block for each directory on its path (an empty file still takes an inode and a block).
    static func stagedSize(of path: String, bytes: Int) -> Int64 {
        let directories = path.utf8.reduce(0) { $0 + ($1 == UInt8(ascii: "/") ? 1 : 0) }
        return Int64(max(bytes, EngineLimits.migrationStagingBlock) + directories * EngineLimits.migrationStagingBlock)
    }

    /// Ends the arrival of `id` in the ledger and releases what it held.
    private func endIncoming(_ id: String) {
        let ended = self.migrations.end(id)
        if ended.releaseID { self.claims.release(id: id) }
        if let subdomain = ended.releaseSubdomain { self.claims.release(subdomain: subdomain) }
    }

    /// Drops the migrations arriving here that sent nothing for
    /// ``EngineConfiguration/incomingIdleMilliseconds`` and are not prepared (a prepared one
    /// waits for its source's decision, however long).
    func dropIdleIncoming() async {
        let staging = self.staging
        let now = self.configuration.clock()
        let idle = self.migrations.idle(now: now, idle: EngineConfiguration.incomingIdleMilliseconds)
        // Asked again for each: an await below lets a PREPARE run meanwhile.
        for id in idle
        where self.migrations.isIdle(id, now: now, idle: EngineConfiguration.incomingIdleMilliseconds)
            && !staging.isPrepared(id)
        {
            self.endIncoming(id)
            try? await runBlocking { try staging.drop(id) }
            self.logger.notice(
                "abandoned migration staging removed",
                metadata: ["event": "migration_staging_dropped", "tenant_id": "\(id)"]
            )
        }
    }

    /// TENANT RECEIVE … CHUNK: `bytes` at `offset` of `path` in the staging directory, after
    /// their CRC-32C is checked.
    public func receiveChunk(
        id: String,
        migration: String,
        path: String,
        offset: Int,
        crc: UInt32,
        bytes: [UInt8]
    ) async throws {
        try self.checkReceiving(id)
        try self.migrations.requireReceiving(id, migration: migration)
        guard MigrationFiles.isValidPath(path) else {
            throw TenantError.invalid(
                "the path must be relative, of [A-Za-z0-9._-] parts, without '..' (at most 4 deep)"
            )
        }
        guard offset >= 0, offset <= EngineLimits.migrationMaxFileSize - bytes.count else {
            throw TenantError.invalid("offset out of range")
        }
        guard bytes.withUnsafeBytes({ CRC32C.checksum($0) }) == crc else {
            throw TenantError.invalid("chunk checksum mismatch: send it again")
        }
        let staging = self.staging
        // A chunk starts within what the file holds (no holes: a sparse file would hide its size
        // from the budget), and what it adds counts against --migrate-staging-limit.
        let existing = try await runBlocking { try staging.size(of: path, in: id) }
        let size = existing ?? 0
        guard offset <= size else {
            throw TenantError.invalid("offset \(offset) is past the end of \(path) (\(size) bytes): no holes")
        }
        // A new file counts as at least a block (and its directories as one each): empty chunks
        // must not make files the budget never sees.
        let growth =
            existing == nil
            ? Self.stagedSize(of: path, bytes: offset + bytes.count)
            : Int64(max(0, offset + bytes.count - max(size, EngineLimits.migrationStagingBlock)))
        try self.migrations.chunk(
            id,
            migration: migration,
            growth: growth,
            isNew: existing == nil,
            limit: self.configuration.migrateStagingLimit,
            now: self.configuration.clock()
        )
        do {
            try await runBlocking { try staging.write(bytes, at: offset, to: path, in: id) }
        } catch let error as TenantError {
            throw error
        } catch {
            throw Self.ioError(error, "could not write \(path)")
        }
        Failpoint.hit("receive-after-chunk")
    }

    /// TENANT RECEIVE … PREPARE: the tenant's whole file list. Files not in it are removed, every
    /// one in it must have its size and CRC, all are synced, and the copy must recover as a tenant
    /// of this id whose subdomain is free here. It then waits, durable and not served, for COMMIT.
    public func receivePrepare(id: String, migration: String, manifest: [MigrationFile]) async throws {
        try self.checkReceiving(id)
        guard self.migrations.arrival(id)?.migration == migration else {
            throw TenantError.notFound(
                "no migration \(migration.prefix(64)) of tenant '\(id)' is arriving here; BEGIN first"
            )
        }
        guard manifest.count <= EngineLimits.migrationMaxFiles else { throw TenantError.invalid("too many files") }
        for file in manifest where !MigrationFiles.isValidPath(file.path) {
            throw TenantError.invalid("bad path in the manifest: \(file.path.prefix(64))")
        }
        let staging = self.staging
        let maxRecordSize = self.configuration.walConfiguration.maxRecordSize
        let memory = self.memory
        let verification = try await runBlocking {
            try staging.verify(id, manifest: manifest, maxRecordSize: maxRecordSize, memory: memory)
        }
        if let problem = verification.problem { throw TenantError.invalid("the copy does not recover: \(problem)") }
        guard verification.tenantID == id else {
            throw TenantError.invalid("the copy holds tenant \(verification.tenantID ?? "none"), not \(id)")
        }
        guard self.migrations.arrival(id)?.migration == migration else {
            throw TenantError(.unavailable, "the migration was started again")
        }
        let subdomain = verification.subdomain
        try self.checkServable(id, subdomain: subdomain)
        // Claimed before the mark is written: no other arrival may prepare with it meanwhile.
        let prepared = try self.migrations.prepare(
            id,
            migration: migration,
            subdomain: subdomain,
            now: self.configuration.clock()
        )
        if prepared.claimSubdomain { self.claims.claim(subdomain: subdomain) }
        do {
            try await runBlocking { try staging.markPrepared(id, migration: migration, subdomain: subdomain) }
        } catch {
            // A mark known absent: not prepared here either (the source sends BEGIN again). A mark
            // that may be on disk (renamed, its sync failed) keeps it prepared, as a restart would.
            if prepared.isNew, (try? await runBlocking { try staging.unmarkPrepared(id) }) != nil,
                let released = self.migrations.unprepare(id, migration: migration)
            {
                self.claims.release(subdomain: released)
            }
            throw Self.ioError(error, "could not mark \(staging.files(id).directory) prepared")
        }
        Failpoint.hit("receive-after-prepare")
    }

    /// Whatever could make the COMMIT fail must fail at PREPARE, before the source decides: the
    /// id served or leaving here, its directory in the way, its subdomain another's.
    private func checkServable(_ id: String, subdomain: String) throws {
        guard self.catalog.entries[id] == nil, self.migrations.departure(id).map({ $0.committed }) ?? true else {
            throw TenantError(.alreadyExists, "tenant '\(id)' is served here, or is leaving here")
        }
        let target = self.store.layout.tenantDirectory(id)
        guard !self.configuration.fileSystem.exists(target) else {
            throw TenantError(.alreadyExists, "\(target) exists here: its operator must move it away first")
        }
        if let clash = self.nameClash(id: id, subdomain: subdomain) { throw TenantError(.alreadyExists, clash) }
        guard !subdomain.isEmpty, self.migrations.preparedSubdomain(of: id) != subdomain else { return }
        if let other = self.catalog.idBySubdomain[subdomain], other != id {
            throw TenantError(.alreadyExists, "subdomain '\(subdomain)' is served here by tenant \(other)")
        }
        if self.claims.holds(subdomain: subdomain) {
            throw TenantError(.alreadyExists, "subdomain '\(subdomain)' is taken here")
        }
    }

    /// TENANT RECEIVE … COMMIT: serves the prepared tenant. Answered OK again for a tenant served
    /// since by this same migration (the source asks again after a crash).
    public func receiveCommit(id: String, migration: String) async throws {
        try self.checkReceiving(id)
        try self.checkMigrationID(migration)
        let staging = self.staging
        if self.catalog.entries[id] != nil {
            let served = self.store.directories?.layout(for: id).tenantFiles(id) ?? self.store.layout.tenantFiles(id)
            guard
                staging.migration(in: served.migratedIn) == migration
                    || staging.migration(in: served.prepared) == migration
            else { throw TenantError(.alreadyExists, "tenant '\(id)' is served here already") }
            return
        }
        // Moved into place by an earlier COMMIT of this migration whose opening failed: open it.
        let placed = staging.migration(in: self.store.layout.tenantFiles(id).prepared) == migration
        if !placed {
            guard staging.migration(in: staging.files(id).prepared) == migration else {
                throw TenantError.notFound("migration \(migration.prefix(64)) of tenant '\(id)' is not prepared here")
            }
            guard !self.claims.holds(id: id) || self.migrations.arrival(id) != nil else {
                throw TenantError(.unavailable, "tenant '\(id)' is busy here; retry")
            }
            do {
                try await runBlocking { try staging.place(id) }
            } catch let error as TenantError {
                throw error
            } catch {
                throw Self.ioError(error, "could not move \(staging.files(id).directory) into place")
            }
        }
        self.endIncoming(id)
        self.forgetDeparture(id)
        self.store.directories?.forget(id: id)
        let tenant = try await self.activate(id: id)
        let metadata = await tenant.metadata
        self.catalog.insert(metadata)
        self.saveCatalog()
        await self.flushCatalog()
        try? await runBlocking { try staging.settle(id) }
        Failpoint.hit("receive-after-commit")
        self.logger.notice(
            "tenant arrived",
            metadata: ["event": "tenant_arrived", "tenant_id": "\(id)", "migration": "\(migration)"]
        )
    }

    /// TENANT RECEIVE … ABORT: drops what arrived for this migration.
    public func receiveAbort(id: String, migration: String) async throws {
        try self.checkReceiving(id)
        try self.checkMigrationID(migration)
        let staging = self.staging
        let held = staging.migration(in: staging.files(id).receiving)
        guard self.migrations.arrival(id)?.migration == migration || held == migration else { return }
        self.endIncoming(id)
        try? await runBlocking { try staging.drop(id) }
    }

    /// Prepared migrations found at start-up keep their id and subdomain from other tenants.
    func loadIncoming() {
        let found = self.staging.scan { id in self.catalog.entries[id] == nil && !self.claims.holds(id: id) }
        for entry in found {
            switch entry {
            case .removed(let name):
                self.logger.notice(
                    "unprepared migration staging removed at start",
                    metadata: ["event": "migration_staging_dropped", "directory": "\(name)"]
                )
            case .prepared(let id, let migration, let subdomain, let bytes):
                // Its source may have decided: the id waits for its COMMIT (or ABORT, or a new BEGIN).
                self.claims.claim(id: id)
                if !subdomain.isEmpty { self.claims.claim(subdomain: subdomain) }
                self.migrations.restore(id, migration: migration, subdomain: subdomain, bytes: bytes)
            }
        }
    }

    static func ioError(_ error: any Error, _ what: String) -> TenantError {
        if let error = error as? TenantError { return error }
        return TenantError.ioError("\(what): \(error)")
    }
}
