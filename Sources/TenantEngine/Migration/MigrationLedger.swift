/// Every migration this server is part of, as values: the tenants it handed over
/// (``Departure``s, and those whose decision a disk fault left open) and the tenants arriving
/// here (``Arrival``s). The registry holds one; its transitions are the migration's state
/// machine on each side, checked here and tested without a disk or a peer
/// (`MigrationLedgerTests`). What a transition asks of the registry's claims comes back in its
/// result: the ledger never claims a name itself.
struct MigrationLedger {
    // MARK: - The source side

    /// The source's side of one `TENANT MIGRATE`, in order.
    enum SourcePhase: Equatable, Sendable {
        /// Rounds of what changed while the tenant serves.
        case copying
        /// The tenant's requests wait: the last round, then PREPARE.
        case paused
        /// The destination holds a verified, durable copy and waits for the decision.
        case prepared
        /// `MIGRATED_TO` is durable here: the tenant is the destination's. COMMIT is asked
        /// (again, after a restart) until the destination confirms or refuses.
        case decided
        /// The decision could be neither made durable nor undone: nobody serves the tenant
        /// until a restart reads the disk.
        case undecided
        /// Given up before the decision: ABORT sent (or tried), the tenant serves here again.
        case abandoned
        /// The destination confirmed it serves the tenant; the copy here goes to `.migrated/`.
        case committed
        /// The destination refuses COMMIT for good (it lost the prepared copy): the operator decides.
        case refused
    }

    /// What happens to a migration on the source.
    enum SourceEvent: Equatable, Sendable {
        case pause
        case prepared
        case decided
        /// A step failed; `undone` says whether the decision's marker is known absent.
        case failed(undone: Bool)
        case confirmed
        case refused
    }

    /// The source's state machine: the phase `event` leads to from `phase`, nil when `event`
    /// cannot happen there.
    static func next(_ phase: SourcePhase, on event: SourceEvent) -> SourcePhase? {
        switch (phase, event) {
        case (.copying, .pause): return .paused
        case (.copying, .failed), (.paused, .failed): return .abandoned
        case (.paused, .prepared): return .prepared
        case (.prepared, .decided): return .decided
        case (.prepared, .failed(let undone)): return undone ? .abandoned : .undecided
        case (.decided, .confirmed): return .committed
        case (.decided, .refused): return .refused
        // A COMMIT not answered leaves it decided: asked again later.
        case (.decided, .failed): return .decided
        default: return nil
        }
    }

    /// Tenants handed to other servers, by id: answered MIGRATED.
    private(set) var departures: [String: Departure] = [:]
    /// The same, by subdomain.
    private(set) var departedBySubdomain: [String: String] = [:]
    /// Tenants whose migration's decision could be neither written nor undone: IOERR until a
    /// restart.
    private(set) var undecided: Set<String> = []

    /// The departure of tenant `id`, if it left.
    func departure(_ id: String) -> Departure? { self.departures[id] }

    /// Whether any tenant left this server.
    var hasDepartures: Bool { !self.departures.isEmpty }

    /// The tenant id a departed tenant's subdomain names.
    func departedTenant(subdomain: String) -> String? { self.departedBySubdomain[subdomain] }

    /// Records a hand-over (decided now, or found on disk at start-up).
    mutating func depart(_ departure: Departure) {
        self.departures[departure.id] = departure
        if !departure.subdomain.isEmpty { self.departedBySubdomain[departure.subdomain] = departure.id }
    }

    /// The destination confirmed migration `migration` of `id`; `directory` is where the copy
    /// here went. False when that departure is gone or confirmed already.
    mutating func confirm(_ id: String, migration: String, directory: String) -> Bool {
        guard var current = self.departures[id], current.migration == migration, !current.committed else {
            return false
        }
        current.committed = true
        current.directory = directory
        self.departures[id] = current
        return true
    }

    /// Forgets a departure (the tenant is served here again); returns it.
    @discardableResult
    mutating func forgetDeparture(_ id: String) -> Departure? {
        guard let departure = self.departures.removeValue(forKey: id) else { return nil }
        if self.departedBySubdomain[departure.subdomain] == id { self.departedBySubdomain[departure.subdomain] = nil }
        return departure
    }

    /// Marks `id` as between servers after a disk fault.
    mutating func leaveUndecided(_ id: String) { self.undecided.insert(id) }

    /// Whether `id` is between servers after a disk fault.
    func isUndecided(_ id: String) -> Bool { self.undecided.contains(id) }

    // MARK: - The destination side

    /// Where a migration arriving here stands.
    enum ArrivalPhase: Equatable, Sendable {
        /// BEGIN taken: chunks arrive.
        case receiving
        /// PREPARE checked, synced and verified the copy; it waits, durable and not served,
        /// for COMMIT or ABORT (never dropped for idleness). Its subdomain is held from others.
        case prepared(subdomain: String)
    }

    /// One migration arriving here.
    struct Arrival: Equatable, Sendable {
        var migration: String
        var phase: ArrivalPhase
        /// When it last sent something (ms); nil for one found prepared at start-up.
        var touched: Int64?
        /// What it holds in staging, as it counts against `--migrate-staging-limit`.
        var bytes: Int64
        /// The files it made (at most ``EngineLimits/migrationMaxFiles``).
        var files: Int
    }

    /// Tenants arriving here, by id.
    private(set) var arrivals: [String: Arrival] = [:]

    /// The migration arriving for `id`.
    func arrival(_ id: String) -> Arrival? { self.arrivals[id] }

    /// The subdomain a prepared arrival holds, if any.
    func preparedSubdomain(of id: String) -> String? {
        guard case .prepared(let subdomain)? = self.arrivals[id]?.phase, !subdomain.isEmpty else { return nil }
        return subdomain
    }

    /// The arrival other than `id` that holds `subdomain`.
    func arrival(holding subdomain: String, besides id: String) -> String? {
        self.arrivals.first { $0.key != id && $0.value.phase == .prepared(subdomain: subdomain) }?.key
    }

    /// What every arrival holds in staging.
    var stagedBytes: Int64 { self.arrivals.values.reduce(0) { $0 + $1.bytes } }

    /// What a BEGIN asks of the registry.
    struct Begun: Equatable {
        /// The id is new here: the registry claims it.
        var claimID: Bool
        /// The subdomain a prepared arrival held, to release: it receives again.
        var releaseSubdomain: String?
    }

    /// BEGIN: `id` receives under `migration` (a new one replaces the one before; what staging
    /// holds stays, so only what differs is sent again). At most `limit` arrive at once.
    mutating func begin(_ id: String, migration: String, now: Int64, limit: Int) throws -> Begun {
        guard let current = self.arrivals[id] else {
            guard self.arrivals.count < limit else {
                throw TenantError(.unavailable, "\(limit) migrations are arriving here already; retry later")
            }
            self.arrivals[id] = Arrival(migration: migration, phase: .receiving, touched: now, bytes: 0, files: 0)
            return Begun(claimID: true, releaseSubdomain: nil)
        }
        var released: String?
        if case .prepared(let subdomain) = current.phase, !subdomain.isEmpty { released = subdomain }
        self.arrivals[id] = Arrival(
            migration: migration,
            phase: .receiving,
            touched: now,
            bytes: current.bytes,
            files: current.files
        )
        return Begun(claimID: false, releaseSubdomain: released)
    }

    /// What staging held when BEGIN listed it.
    mutating func held(_ id: String, bytes: Int64, files: Int) {
        self.arrivals[id]?.bytes = bytes
        self.arrivals[id]?.files = files
    }

    /// The arrival `migration` of `id`, receiving.
    /// - Throws: NOTFOUND when no such migration is arriving; INVALID when it is prepared
    ///   (its copy was verified: BEGIN again to change it).
    func requireReceiving(_ id: String, migration: String) throws {
        guard let current = self.arrivals[id], current.migration == migration else {
            throw TenantError.notFound(
                "no migration \(migration.prefix(64)) of tenant '\(id)' is arriving here; BEGIN first"
            )
        }
        guard current.phase == .receiving else {
            throw TenantError.invalid("migration \(migration) of tenant '\(id)' is prepared; BEGIN again to send more")
        }
    }

    /// CHUNK: counts `growth` bytes (and a new file) against the budget before they are written.
    /// - Throws: INVALID past ``EngineLimits/migrationMaxFiles`` files; QUOTA past `limit`
    ///   bytes over every arrival (0: unlimited).
    mutating func chunk(_ id: String, migration: String, growth: Int64, isNew: Bool, limit: Int64, now: Int64) throws {
        try self.requireReceiving(id, migration: migration)
        if isNew, self.arrivals[id, default: Self.none].files >= EngineLimits.migrationMaxFiles {
            throw TenantError.invalid("a migration sends at most \(EngineLimits.migrationMaxFiles) files")
        }
        if limit > 0 && self.stagedBytes + growth > limit {
            throw TenantError(
                .quotaExceeded,
                "migrations arriving here would hold more than --migrate-staging-limit (\(limit) bytes)"
            )
        }
        self.arrivals[id]?.bytes += growth
        if isNew { self.arrivals[id]?.files += 1 }
        self.arrivals[id]?.touched = now
    }

    private static let none = Arrival(migration: "", phase: .receiving, touched: nil, bytes: 0, files: 0)

    /// What a PREPARE asks of the registry.
    struct Prepared: Equatable {
        /// The registry claims the subdomain now (not empty, not held already).
        var claimSubdomain: Bool
        /// It was receiving: a failure to mark it prepared on disk may take it back
        /// (``unprepare(_:migration:)``). False for a PREPARE again, whose mark is on disk already.
        var isNew: Bool
    }

    /// PREPARE, once the copy is verified: `id` holds `subdomain` and waits for the decision.
    /// A PREPARE again (a lost reply) keeps the arrival prepared.
    /// - Throws: UNAVAILABLE when the migration is not the one arriving (BEGIN started another);
    ///   INVALID for a PREPARE again with another subdomain.
    mutating func prepare(_ id: String, migration: String, subdomain: String, now: Int64) throws -> Prepared {
        guard let current = self.arrivals[id], current.migration == migration else {
            throw TenantError(.unavailable, "the migration was started again")
        }
        let held: Bool
        switch current.phase {
        case .receiving: held = false
        case .prepared(let before):
            guard before == subdomain else {
                throw TenantError.invalid("migration \(migration) was prepared with subdomain '\(before)'")
            }
            held = true
        }
        self.arrivals[id]?.phase = .prepared(subdomain: subdomain)
        self.arrivals[id]?.touched = now
        return Prepared(claimSubdomain: !subdomain.isEmpty && !held, isNew: !held)
    }

    /// Takes a PREPARE back (its mark could not be written, and is known absent): receiving again.
    /// - Returns: the subdomain to release, if it held one.
    mutating func unprepare(_ id: String, migration: String) -> String? {
        guard let current = self.arrivals[id], current.migration == migration,
            case .prepared(let subdomain) = current.phase
        else { return nil }
        self.arrivals[id]?.phase = .receiving
        return subdomain.isEmpty ? nil : subdomain
    }

    /// Whether `id` may be committed under `migration`: prepared by it.
    func isPrepared(_ id: String, migration: String) -> Bool {
        guard let current = self.arrivals[id], current.migration == migration else { return false }
        if case .prepared = current.phase { return true }
        return false
    }

    /// The end of an arrival (COMMIT served it, ABORT dropped it, or it sat idle).
    struct Ended: Equatable {
        /// The registry releases the id.
        var releaseID: Bool
        /// The subdomain the registry releases.
        var releaseSubdomain: String?
    }

    /// Ends the arrival of `id`, whatever its phase.
    @discardableResult
    mutating func end(_ id: String) -> Ended {
        guard let current = self.arrivals.removeValue(forKey: id) else {
            return Ended(releaseID: false, releaseSubdomain: nil)
        }
        if case .prepared(let subdomain) = current.phase, !subdomain.isEmpty {
            return Ended(releaseID: true, releaseSubdomain: subdomain)
        }
        return Ended(releaseID: true, releaseSubdomain: nil)
    }

    /// The receiving arrivals that sent nothing for `idle` ms (prepared ones wait however long).
    func idle(now: Int64, idle: Int64) -> [String] {
        self.arrivals.keys.filter { self.isIdle($0, now: now, idle: idle) }.sorted()
    }

    /// Whether arrival `id` is receiving and sent nothing for `idle` ms.
    func isIdle(_ id: String, now: Int64, idle: Int64) -> Bool {
        guard let arrival = self.arrivals[id], arrival.phase == .receiving, let touched = arrival.touched else {
            return false
        }
        return now - touched >= idle
    }

    /// A prepared arrival found at start-up: its source may have decided, so it waits for
    /// COMMIT, ABORT or a new BEGIN. The registry claims the id and the subdomain.
    mutating func restore(_ id: String, migration: String, subdomain: String, bytes: Int64) {
        self.arrivals[id] = Arrival(
            migration: migration,
            phase: .prepared(subdomain: subdomain),
            touched: nil,
            bytes: bytes,
            files: 0
        )
    }
}
