import Logging
import WAL

/// The catalog: the registry's index of every tenant (id, subdomain, plan, credential keys),
/// reconciled with the disk at start, written in the background as a cache of the tenants' own
/// logs (`database` strategy), and the credential journal that makes a user change durable
/// before the catalog file is written again.
extension TenantRegistry {
    /// Makes the catalog agree with the tenant directories on disk.
    func reconcileCatalog(onDisk: Set<String>, index: Catalog?) async throws {
        var changed = index == nil
        self.catalog = index ?? Catalog()
        if let journal = self.credentialJournal, journal.hasFiles {
            // The user changes made since the catalog was written; then written into it.
            let applied = journal.replay(into: &self.catalog)
            self.logger.debug("replayed \(applied) credential changes")
            self.compactionRequested = true
            changed = true
        }
        // Tenants the index does not list, or lists without their credential keys (an index of
        // an earlier version): each is read once, so that AUTH never needs to open a tenant.
        let missing = onDisk.filter { self.catalog.entries[$0] == nil || self.catalog.credentials[$0] == nil }
        // Every directory listed and as many entries as directories: nothing listed is gone.
        if self.catalog.entries.count != onDisk.count - missing.filter({ self.catalog.entries[$0] == nil }).count {
            for id in self.catalog.entries.keys where !onDisk.contains(id) {
                self.catalog.remove(id: id)
                changed = true
            }
        }
        self.clashes = [:]
        for id in missing.sorted() {
            do {
                // Read for its metadata, then closed again: start-up keeps no tenant open.
                let tenant = try await self.activate(id: id)
                self.active[id] = nil
                await tenant.close()
                changed = true
            } catch {
                self.logger.error("tenant directory \(self.store.layout.directoryName(id)) is not served: \(error)")
            }
        }
        // Two directories found now (neither in the index) whose names clash: which one is the
        // real tenant cannot be told from the directories, so neither is served, whichever was
        // read first (an id sorting first must not win a name), and the operator is told.
        for (refused, other) in self.clashes.sorted(by: { $0.key < $1.key })
        where index?.entries[other] == nil && self.catalog.entries[other] != nil {
            self.catalog.remove(id: other)
            self.logger.error(
                "tenant directories \(self.store.layout.directoryName(other)) and \(self.store.layout.directoryName(refused)) name each other's id or subdomain: neither is served; remove the one that is not the tenant and restart",
                metadata: ["event": "tenant_name_clash", "tenant_id": "\(other)", "other": "\(refused)"]
            )
            changed = true
        }
        self.clashes = [:]
        if changed {
            self.saveCatalog()
            await self.flushCatalog()
        }
    }

    /// Has the catalog file written (`database` strategy; the shared log is its own index
    /// otherwise). Writes run one at a time in the background and the newest catalog wins: the
    /// file is a cache, and concurrent writers of one file would race.
    func saveCatalog() {
        guard self.store.directories != nil else { return }
        self.catalogDirty = true
        guard self.catalogWriter == nil else { return }
        self.catalogWriter = Task { await self.writeCatalog() }
    }

    func writeCatalog() async {
        guard let directories = self.store.directories else {
            // Never reached (``saveCatalog()`` checks first); if it were, a flush waits for nothing.
            self.catalogWriter = nil
            return
        }
        let journal = self.credentialJournal
        while self.catalogDirty {
            self.catalogDirty = false
            if self.compactionRequested, let journal {
                // Renamed before the snapshot: every record in it was applied before the snapshot.
                self.compactionRequested = false
                do {
                    _ = try await runBlocking { try journal.rotate() }
                } catch {
                    self.logger.error("credential journal not rotated (it keeps growing): \(error)")
                }
            }
            let snapshot = self.catalog
            do {
                try await runBlocking { try directories.saveIndex(snapshot) }
                self.catalogSaved = true
                if let journal {
                    // The catalog holds every record of the renamed journal now.
                    do {
                        try await runBlocking { try journal.dropPrevious() }
                    } catch {
                        self.logger.error("credential journal not removed (replayed at the next start): \(error)")
                    }
                }
            } catch {
                self.catalogSaved = false
                self.logger.error("catalog not saved (it is rebuilt at the next start): \(error)")
            }
        }
        self.catalogWriter = nil
    }

    /// Waits until the catalog file holds the newest catalog.
    /// - Returns: false when the last write failed (the file is then removed, if it could be,
    ///   so that the next start rebuilds it from the tenants' own logs).
    @discardableResult
    func flushCatalog() async -> Bool {
        while let writer = self.catalogWriter { await writer.value }
        return self.catalogSaved
    }

    /// Puts a tenant's credential change in the catalog's keys and in the credential journal, and
    /// waits until the journal holds it durably: a new user or token is acknowledged only once a
    /// restart would let it in (the catalog itself is written when the journal passes 1 MiB).
    /// - Throws: IOERR when the journal could not be written.
    func credentialsChanged(_ id: String, _ change: CredentialChange) async throws {
        guard self.catalog.entries[id] != nil else { return }
        // Applied before it is journalled: a compaction's snapshot taken after the record went
        // into the renamed journal holds it.
        self.catalog.apply(change, to: id)
        guard let journal = self.credentialJournal else { return }
        do {
            try await runBlocking { try journal.append(id: id, change: change) }
        } catch {
            throw TenantError.ioError(
                "the user change is in the tenant's log, but its key could not be journalled: \(error)"
            )
        }
        if journal.bytes > EngineLimits.credentialCompactionBytes {
            self.compactionRequested = true
            self.saveCatalog()
        }
    }

    /// Keeps the catalog in step with a tenant's metadata once the tenant's log holds it.
    nonisolated func metadataObserver() -> @Sendable (TenantMetadata) async throws -> Void {
        { [weak self] metadata in
            guard let self else { return }
            try await self.metadataChanged(metadata)
        }
    }

    /// Puts a tenant's new metadata in the catalog, and waits until the catalog file holds it: a
    /// metadata change is acknowledged only once start-up would see it too.
    /// - Throws: IOERR when the catalog could not be written.
    func metadataChanged(_ metadata: TenantMetadata) async throws {
        guard self.catalog.entries[metadata.tenantID] != nil else { return }
        self.catalog.insert(metadata)
        self.saveCatalog()
        guard await self.flushCatalog() else {
            throw TenantError.ioError(
                "the tenant's change is in its log, but the catalog could not be written (the next start rebuilds it)"
            )
        }
    }
}
