import Logging
import WAL

/// `TENANT MIGRATE` on the source: the registry's part of a ``MigrationSource``'s run (the
/// checks and claims, the pause of the tenant's requests, reopening it when the migration is
/// given up, the departure once it is decided), and asking the destination to COMMIT until it
/// confirms.
extension TenantRegistry {
    /// Lets the registry reach other servers (the server gives it its protocol client), and
    /// starts the confirmations of hand-overs a crash interrupted.
    public func setMigrationPeers(_ factory: @escaping MigrationPeerFactory) {
        self.migrationPeers = factory
        for departure in self.migrations.departures.values where !departure.committed { self.retryCommit(departure) }
    }

    /// TENANT MIGRATE: sends tenant `id` to the server at `host:port` and hands it over. The
    /// directory is copied while the tenant serves (rounds of what changed), then its requests
    /// wait while the last changes are sent, the destination checks and syncs its copy, and this
    /// server records its decision; from then on the tenant is the destination's. Any failure
    /// before the decision leaves it here, serving. `database` strategy.
    /// - Parameters:
    ///   - token: the destination's operator token (nil: this server's own).
    /// - Throws: NOTFOUND, INVALID, LOADING (busy), IOERR, or the destination's refusal.
    public func migrateTenant(id: String, host: String, port: Int, token: String?) async throws -> MigrationReport {
        let (directories, metadata, factory) = try self.checkMigratable(id)
        self.claims.claim(id: id)
        defer { self.claims.release(id: id) }
        let target = MigrationSource.hostPort(host, port)
        let token = token ?? self.adminToken
        let migration = Tokens.hex((0..<8).map { _ in UInt8.random(in: 0...255) })
        self.logger.notice(
            "tenant migration started",
            metadata: [
                "event": "migration_started", "tenant_id": "\(id)", "target": "\(target)", "migration": "\(migration)",
            ]
        )
        let source = try await MigrationSource.begin(
            id: id,
            migration: migration,
            target: target,
            files: directories.layout(for: id).tenantFiles(id),
            peer: try await factory(host, port, token),
            fileSystem: self.configuration.fileSystem
        )
        Failpoint.hit("migrate-after-begin")
        let copied: (rounds: Int, bytes: Int)
        do {
            copied = try await source.copyWhileServing()
        } catch {
            await self.abandon(source, token: token)
            self.logger.warning(
                "tenant migration failed",
                metadata: ["event": "migration_failed", "tenant_id": "\(id)", "error": "\(error)"]
            )
            throw error
        }
        Failpoint.hit("migrate-after-precopy")
        try await self.waitForActivations(of: id, source: source, token: token)
        let pauseStart = ContinuousClock.now
        let departure = Departure(
            id: id,
            migration: migration,
            target: target,
            subdomain: metadata.subdomain,
            token: token == self.adminToken ? "" : token,
            directory: source.files.directory,
            committed: false,
            at: self.configuration.clock(),
            credentials: self.catalog.credentials[id]
        )
        try await self.handOver(source, departure: departure, token: token)
        return await self.depart(source, departure, copied: copied, pauseStart: pauseStart)
    }

    /// What a migration of `id` needs: the directories capability, the tenant, a way to reach
    /// other servers, and the tenant free of other work.
    private func checkMigratable(
        _ id: String
    ) throws -> (any TenantDirectories, TenantMetadata, MigrationPeerFactory) {
        guard case .running = self.state else { throw TenantError(.unavailable, "server is starting or stopping") }
        guard let directories = self.store.directories else {
            throw TenantError.invalid("TENANT MIGRATE is for the database strategy")
        }
        guard let metadata = self.catalog.entries[id] else {
            if let departure = self.migrations.departure(id) { throw TenantError.migrated(id, departure.target) }
            throw TenantError.notFound("no tenant '\(id)'")
        }
        guard let factory = self.migrationPeers else { throw TenantError(.unavailable, "server is starting") }
        // A move, a deletion, a detach or another migration: busy. A tenant merely being opened is
        // fine: the pause waits for its opening to end.
        guard !self.claims.holds(id: id), !self.migrations.isUndecided(id) else {
            throw TenantError(.unavailable, "tenant '\(id)' is busy; retry")
        }
        return (directories, metadata, factory)
    }

    /// Activations begun during the copy (a login, a backup, a REOPEN's) end first, so that no
    /// instance of the tenant is open but the one the pause closes; from the last check to the
    /// start of the pause nothing is awaited, so none can begin in between.
    private func waitForActivations(of id: String, source: MigrationSource, token: String) async throws {
        while true {
            guard case .running = self.state else {
                await self.abandon(source, token: token)
                throw TenantError(.unavailable, "server is stopping")
            }
            guard let running = self.activating.running(id) else { return }
            _ = try? await running.value
            // Its caller installs the tenant and forgets the task on this actor: let it run.
            if self.activating.running(id) == running { try? await Task.sleep(for: .milliseconds(1)) }
        }
    }

    /// The pause: the tenant's requests join this hand-over as they join an activation, while
    /// the source decides. Returns once the tenant is the destination's; otherwise it serves
    /// here again (reopened) or, after a disk fault, nowhere, and the error is thrown.
    private func handOver(_ source: MigrationSource, departure: Departure, token: String) async throws {
        let id = source.id
        let current = self.active.removeValue(forKey: id)
        let store = self.store
        let context = self.tenantContext
        let task = self.activating.start(id) {
            // Everything acknowledged is in the log once it is closed; no checkpoint now, so the
            // last round sends only the log's new tail.
            if let current { await current.close(checkpoint: false) }
            do {
                try await source.decide(marker: departure.marker, stillRunning: { await self.isRunning })
            } catch {
                if source.phase == .undecided { throw error }
                await self.abandon(source, token: token)
                // Never handed over: it serves here again.
                return try await store.open(id: id, context: context)
            }
            Failpoint.hit("migrate-after-decision")
            throw TenantError.migrated(id, source.target)
        }
        defer { self.activating.finish(id, task) }
        let reopened: Tenant
        do {
            reopened = try await task.value
        } catch {
            switch source.phase {
            case .decided:
                return
            case .undecided:
                self.migrations.leaveUndecided(id)
                await source.peer.close()
                self.logger.critical(
                    "tenant \(id) is served by no server: its migration's decision could be neither written nor undone (\(error)); fix the disk and restart: the file \(source.files.migratedTo) decides (present: the tenant is \(source.target)'s)",
                    metadata: ["event": "migration_undecided", "tenant_id": "\(id)"]
                )
                throw TenantError.ioError("tenant '\(id)' is between servers after a disk fault; see the log")
            default:
                await source.peer.close()
                throw error
            }
        }
        await source.peer.close()
        if case .stopped = self.state {
            await reopened.close()
            throw TenantError(.unavailable, "server is stopping")
        }
        self.active[id] = reopened
        let error: any Error = source.error ?? TenantError(.refused, "migration failed")
        self.logger.warning(
            "tenant migration failed",
            metadata: ["event": "migration_failed", "tenant_id": "\(id)", "error": "\(error)"]
        )
        throw error
    }

    /// The tenant is the destination's: answered MIGRATED from now on, before anything else
    /// can run here; then COMMIT is asked.
    private func depart(
        _ source: MigrationSource,
        _ departure: Departure,
        copied: (rounds: Int, bytes: Int),
        pauseStart: ContinuousClock.Instant
    ) async -> MigrationReport {
        let id = source.id
        self.migrations.depart(departure)
        self.catalog.remove(id: id)
        self.counters.remove(id: id)
        self.saveCatalog()
        self.migrationEvents.tell(id: id, reply: "\(id) \(source.target)")
        let outcome = await self.commit(departure, peer: source.peer)
        source.advance(outcome == .committed ? .confirmed : outcome == .refused ? .refused : .failed(undone: false))
        await source.peer.close()
        if outcome == .pending { self.retryCommit(departure) }
        await self.flushCatalog()
        let last = source.lastRound
        let pause = (last.decidedAt ?? .now) - pauseStart
        let report = MigrationReport(
            tenantID: id,
            target: source.target,
            migration: source.migration,
            rounds: copied.rounds + 1,
            files: last.manifest.count,
            bytesSent: copied.bytes + last.bytes,
            pauseMilliseconds: pause.components.seconds * 1000 + pause.components.attoseconds
                / 1_000_000_000_000_000,
            committed: outcome == .committed
        )
        self.logger.notice(
            "tenant migrated",
            metadata: [
                "event": "tenant_migrated", "tenant_id": "\(id)", "target": "\(source.target)",
                "migration": "\(source.migration)", "pause_ms": "\(report.pauseMilliseconds)",
                "bytes": "\(report.bytesSent)", "committed": "\(report.committed)",
            ]
        )
        return report
    }

    var isRunning: Bool {
        if case .running = self.state { return true }
        return false
    }

    /// Tells the destination to drop what it received, and closes the connection. A connection
    /// already gone (a timeout closes it) is replaced: a few tries in the background, so that the
    /// destination does not keep a staging directory, and its subdomain claimed, for nothing.
    private func abandon(_ source: MigrationSource, token: String) async {
        let (id, migration, target) = (source.id, source.migration, source.target)
        do {
            try await source.peer.abort(id: id, migration: migration)
            await source.peer.close()
            return
        } catch {
            await source.peer.close()
        }
        guard let factory = self.migrationPeers, let (host, port) = try? MigrationSource.split(target) else { return }
        let logger = self.logger
        Task {
            for attempt in 0..<5 {
                try? await Task.sleep(for: .milliseconds(500 << attempt))
                guard let fresh = try? await factory(host, port, token) else { continue }
                let told = (try? await fresh.abort(id: id, migration: migration)) != nil
                await fresh.close()
                if told { return }
            }
            logger.warning(
                "the destination \(target) was not told to drop migration \(migration) of tenant \(id): its .incoming-\(id) stays until the next try or its operator removes it"
            )
        }
    }

    /// How asking the destination to serve a migrated tenant ended.
    enum CommitOutcome: Equatable {
        case committed
        /// No answer yet: ask again later.
        case pending
        /// The destination refuses for good (it lost the prepared copy): the operator decides.
        case refused
    }

    /// Asks the destination to serve the tenant, a few times; then the source's copy moves to
    /// `.migrated/`.
    private func commit(_ departure: Departure, peer: (any MigrationPeer)?) async -> CommitOutcome {
        var peer = peer
        var opened: (any MigrationPeer)?
        defer {
            if let opened { Task { await opened.close() } }
        }
        for attempt in 0..<5 {
            if attempt > 0 { try? await Task.sleep(for: .milliseconds(200 << attempt)) }
            do {
                if peer == nil, let factory = self.migrationPeers {
                    let (host, port) = try MigrationSource.split(departure.target)
                    let fresh = try await factory(
                        host,
                        port,
                        departure.token.isEmpty ? self.adminToken : departure.token
                    )
                    peer = fresh
                    opened = fresh
                }
                guard let connected = peer else { return .pending }
                try await connected.commit(id: departure.id, migration: departure.migration)
                Failpoint.hit("migrate-after-commit")
                await self.settle(departure)
                return .committed
            } catch let error as TenantError where [.notFound, .alreadyExists, .invalid].contains(error.kind) {
                self.logger.error(
                    "the destination refuses to serve migrated tenant \(departure.id): \(error); its copy here is in \(departure.directory)"
                )
                return .refused
            } catch {
                self.logger.warning("migrated tenant \(departure.id): the destination has not confirmed yet: \(error)")
                if let connected = opened {
                    await connected.close()
                    opened = nil
                }
                peer = nil
            }
        }
        return .pending
    }

    /// Keeps asking the destination in the background until it confirms (or refuses for good;
    /// a restart asks again).
    private func retryCommit(_ departure: Departure) {
        guard self.commitRetries[departure.id] == nil, self.migrationPeers != nil else { return }
        self.commitRetries[departure.id] = Task {
            var delay = Duration.seconds(1)
            while !Task.isCancelled {
                if await self.commit(departure, peer: nil) != .pending { break }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(30))
            }
            self.commitRetries[departure.id] = nil
        }
    }

    /// The destination serves it: the source's copy goes to `<root>/.migrated/`, kept for the operator.
    private func settle(_ departure: Departure) async {
        guard let current = self.migrations.departure(departure.id), current.migration == departure.migration,
            !current.committed
        else { return }
        let fileSystem = self.configuration.fileSystem
        let source = departure.directory
        let root = DataLayout(root: POSIXFile.parent(of: source))
        let kept = root.migratedEntry(POSIXFile.basename(source), stamp: departure.at)
        var directory = source
        do {
            try await runBlocking {
                if try fileSystem.makeDirectory(root.migratedDirectory) { try fileSystem.syncDirectory(root.root) }
                if fileSystem.exists(source) {
                    try fileSystem.rename(source, to: kept)
                    try fileSystem.syncDirectory(root.root)
                    try fileSystem.syncDirectory(root.migratedDirectory)
                }
            }
            directory = kept
        } catch {
            self.logger.error("migrated tenant \(departure.id): its copy stays in \(source): \(error)")
        }
        _ = self.migrations.confirm(departure.id, migration: departure.migration, directory: directory)
    }

    /// Forgets a departure (the tenant is served here again).
    func forgetDeparture(_ id: String) {
        guard self.migrations.forgetDeparture(id) != nil else { return }
        self.commitRetries.removeValue(forKey: id)?.cancel()
    }

    /// Takes the departures the store found at start-up.
    func loadDepartures() {
        guard let directories = self.store.directories else { return }
        for departure in directories.departures.take() where self.catalog.entries[departure.id] == nil {
            self.migrations.depart(departure)
        }
    }
}
