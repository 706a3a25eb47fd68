import WAL

/// The destination's side of a migration on disk: the staging directory
/// `<data>/.incoming-<id>/` where a tenant arrives, its markers (`RECEIVING`, `PREPARED`), and
/// its move into place at COMMIT. Blocking file work only, run off the registry (``runBlocking``);
/// what the migration may do when is the ledger's (``MigrationLedger``).
struct MigrationStaging: Sendable {
    let layout: DataLayout
    let fileSystem: any WALFileSystem

    /// The staging directory of tenant `id`.
    func files(_ id: String) -> TenantFiles { TenantFiles(self.layout.incomingDirectory(id)) }

    /// BEGIN: makes the staging directory (what it holds stays), marks it receiving `migration`
    /// and no longer prepared, and lists what it holds.
    func open(_ id: String, migration: String) throws -> [MigrationFile] {
        let staging = self.files(id)
        let fileSystem = self.fileSystem
        if try fileSystem.makeDirectory(staging.directory) { try fileSystem.syncDirectory(self.layout.root) }
        // Held again for this migration: no longer prepared.
        if fileSystem.exists(staging.prepared) { try fileSystem.remove(staging.prepared) }
        try fileSystem.writeFileAtomically(
            staging.receiving,
            contents: MigrationFiles.encode([("migration", migration)])
        )
        var files: [MigrationFile] = []
        for path in try MigrationFiles.list(staging.directory, fileSystem: fileSystem) {
            if let sum = try MigrationFiles.checksum(staging.file(path), prefix: nil, fileSystem: fileSystem) {
                files.append(MigrationFile(path: path, size: sum.size, crc: sum.crc))
            }
        }
        Failpoint.hit("receive-after-begin")
        return files
    }

    /// Whether tenant `id`'s staging is prepared (its source may have decided: never dropped).
    func isPrepared(_ id: String) -> Bool { self.fileSystem.exists(self.files(id).prepared) }

    /// Removes tenant `id`'s staging.
    func drop(_ id: String) throws { try self.fileSystem.removeTree(self.files(id).directory) }

    /// The size of `path` in tenant `id`'s staging, nil when there is no such file.
    /// - Throws: INVALID when `path` is a directory or anything but a file.
    func size(of path: String, in id: String) throws -> Int? {
        let full = self.files(id).file(path)
        switch POSIXFile.kind(full) {
        case nil: return nil
        case .regularFile: return try self.fileSystem.fileSize(full)
        case .directory, .other: throw TenantError.invalid("\(path) is not a file here")
        }
    }

    /// CHUNK: `bytes` at `offset` of `path` (the file cut there first). Not synced: PREPARE syncs.
    func write(_ bytes: [UInt8], at offset: Int, to path: String, in id: String) throws {
        try MigrationFiles.write(bytes, at: offset, to: path, in: self.files(id).directory)
    }

    /// PREPARE's checks: files not in `manifest` removed, every one in it of its size and CRC,
    /// all synced; then the copy must recover as a tenant.
    /// - Returns: what recovering the copy found (its id, its subdomain, or its problem).
    /// - Throws: INVALID for a file that does not match the manifest; IOERR.
    func verify(
        _ id: String,
        manifest: [MigrationFile],
        maxRecordSize: Int,
        memory: MemoryBudget?
    ) throws -> TenantVerification {
        let staging = self.files(id)
        let fileSystem = self.fileSystem
        let wanted = Dictionary(manifest.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
        for path in try MigrationFiles.list(staging.directory, fileSystem: fileSystem) where wanted[path] == nil {
            try fileSystem.remove(staging.file(path))
        }
        for file in manifest {
            guard let sum = try MigrationFiles.checksum(staging.file(file.path), prefix: nil, fileSystem: fileSystem),
                sum.size == file.size, sum.crc == file.crc
            else {
                throw TenantError.invalid("\(file.path) does not match the manifest: send it again")
            }
        }
        try MigrationFiles.syncTree(staging.directory, fileSystem: fileSystem)
        return TenantVerifier.verify(
            path: staging.directory,
            maxRecordSize: maxRecordSize,
            fileSystem: fileSystem,
            memory: memory
        )
    }

    /// PREPARE's mark, durable: the staging holds `migration`'s verified copy, with `subdomain`.
    func markPrepared(_ id: String, migration: String, subdomain: String) throws {
        try self.fileSystem.writeFileAtomically(
            self.files(id).prepared,
            contents: MigrationFiles.encode([("migration", migration), ("subdomain", subdomain)])
        )
    }

    /// Takes PREPARE's mark back: removed, durably.
    func unmarkPrepared(_ id: String) throws {
        let staging = self.files(id)
        if self.fileSystem.exists(staging.prepared) { try self.fileSystem.remove(staging.prepared) }
        try self.fileSystem.syncDirectory(staging.directory)
    }

    /// The migration a marker of `files` names (`PREPARED`, `RECEIVING` or `MIGRATED_IN`).
    func migration(in marker: String) -> String? {
        (try? self.fileSystem.readFile(marker)).flatMap { MigrationFiles.fields($0)["migration"] }
    }

    /// COMMIT: the prepared staging of `id` renamed into place as its tenant directory, durably.
    /// - Throws: EXISTS when a directory is there already; IOERR.
    func place(_ id: String) throws {
        let staging = self.files(id).directory
        let target = self.layout.tenantDirectory(id)
        guard !self.fileSystem.exists(target) else {
            throw TenantError(.alreadyExists, "\(target) exists: remove it first")
        }
        try self.fileSystem.rename(staging, to: target)
        try self.fileSystem.syncDirectory(self.layout.root)
        Failpoint.hit("receive-after-commit-rename")
    }

    /// After COMMIT served the tenant: its `PREPARED` becomes `MIGRATED_IN` (so that a COMMIT
    /// asked again is answered OK), `RECEIVING` goes.
    func settle(_ id: String) throws {
        let served = self.layout.tenantFiles(id)
        try self.fileSystem.rename(served.prepared, to: served.migratedIn)
        try? self.fileSystem.remove(served.receiving)
        try self.fileSystem.syncDirectory(served.directory)
    }

    /// A staging directory found at start-up.
    enum Found {
        /// Prepared: its source may have decided, so it waits.
        case prepared(id: String, migration: String, subdomain: String, bytes: Int64)
        /// Not prepared (no source waits on it: a migration sends BEGIN again after a restart):
        /// removed, so that abandoned staging never piles up.
        case removed(name: String)
    }

    /// The staging directories in the data directory, as start-up finds them; `keep` says
    /// whether an id may wait (not served here, not claimed).
    func scan(keep: (String) -> Bool) -> [Found] {
        var found: [Found] = []
        for (name, isDirectory) in (try? self.fileSystem.listDirectoryEntries(self.layout.root)) ?? []
        where isDirectory && name.hasPrefix(DataLayout.incomingPrefix) {
            let staging = TenantFiles(self.layout.entry(name))
            guard let id = self.layout.tenantID(ofIncomingNamed: name), keep(id),
                let bytes = try? self.fileSystem.readFile(staging.prepared),
                let migration = MigrationFiles.fields(bytes)["migration"]
            else {
                if !self.fileSystem.exists(staging.prepared) {
                    try? self.fileSystem.removeTree(staging.directory)
                    found.append(.removed(name: name))
                }
                continue
            }
            found.append(
                .prepared(
                    id: id,
                    migration: migration,
                    subdomain: MigrationFiles.fields(bytes)["subdomain"] ?? "",
                    // What it holds counts against --migrate-staging-limit, as before the restart.
                    bytes: (try? self.fileSystem.treeSize(staging.directory)) ?? 0
                )
            )
        }
        return found
    }
}
