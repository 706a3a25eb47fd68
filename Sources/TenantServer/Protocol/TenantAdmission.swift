import DequeModule
import Synchronization

/// Per-tenant admission: what keeps a flooding tenant from starving a quiet one.
///
/// Every request a connection's handler parses is *charged* to the connection's tenant until the
/// connection has run it. While only one tenant is active, a tenant may have as many requests
/// in flight as its connections' own windows allow (``RequestGate/bound``). While several are,
/// each may have its share of ``window`` (never under ``minimumShare``) in flight, give or take
/// the batch a connection takes at once (``allowance(_:)``): a connection whose tenant is at its
/// share stops parsing, and stops reading its socket, until one of the tenant's requests has run;
/// the tenant's waiting connections are then woken one at a time, oldest first (round-robin
/// between them). What a flood can put ahead of another tenant's request on the
/// event loops is thus its share, not the sum of its connections' windows; and since the flood's
/// connections stop reading, its clients' bytes wait in the kernel, costing the server nothing.
///
/// A tenant counts as active while it has requests in flight or handed one over within the last
/// ``activeSpan``; the count of active tenants is taken by a sweep at most every ``sweepInterval``,
/// only when some tenant is past ``minimumShare`` (a tenant under it never asks).
///
/// A connection that waits for its client to read its replies gives its charge back (see
/// ``RequestGate/park()``): a client that does not read slows only itself, not its tenant's other
/// connections.
final class TenantAdmission: Sendable {
    /// The requests in flight that the active tenants share.
    let window: Int
    /// The least a tenant may always have in flight.
    let minimumShare: Int
    static let sweepInterval: Duration = .milliseconds(10)

    private let accounts = Mutex<[String: (account: Account, connections: Int)]>([:])
    private let epoch = ContinuousClock.now
    /// When the last sweep ran, in nanoseconds from ``epoch`` (claimed by the sweeper first).
    private let sweptAt = Atomic<Int64>(Int64.min / 2)

    /// The tenants active at the last sweep.
    private let active = Atomic<Int>(0)

    /// How long a tenant counts as active after its last request.
    let activeSpan: Duration

    /// Creates the admission; `window` 0 turns the shares off (connections then charge nothing).
    init(window: Int, minimumShare: Int = 8, activeSpan: Duration = .milliseconds(100)) {
        self.window = max(0, window)
        self.minimumShare = max(1, minimumShare)
        self.activeSpan = activeSpan
    }

    /// Whether tenants are held to shares at all.
    var isEnabled: Bool { self.window > 0 }

    /// The account of tenant `id`, for one more connection (give it back with ``detach(_:)``).
    func attach(_ id: String) -> Account {
        self.accounts.withLock { accounts in
            if let entry = accounts[id] {
                accounts[id] = (entry.account, entry.connections + 1)
                return entry.account
            }
            let account = Account(tenantID: id, admission: self)
            accounts[id] = (account, 1)
            return account
        }
    }

    /// A connection no longer works in the account's tenant.
    func detach(_ account: Account) {
        self.accounts.withLock { accounts in
            let id = account.tenantID
            guard let entry = accounts[id], entry.account === account else { return }
            if entry.connections <= 1 {
                accounts[id] = nil
            } else {
                accounts[id] = (account, entry.connections - 1)
            }
        }
    }

    /// The tenants active now, by the last sweep (taken again when it is older than
    /// ``sweepInterval``; while one thread sweeps, the others take the last count).
    func activeTenants() -> Int {
        let now = Self.nanoseconds(self.epoch.duration(to: .now))
        let last = self.sweptAt.load(ordering: .acquiring)
        guard now - last >= Self.nanoseconds(Self.sweepInterval),
            self.sweptAt.compareExchange(expected: last, desired: now, ordering: .acquiringAndReleasing).exchanged
        else { return self.active.load(ordering: .acquiring) }
        let span = Self.nanoseconds(self.activeSpan)
        // After a long pause between sweeps, a request seen since the last one may be older than
        // the span: it counts for this sweep only (not for the span after it).
        let trustRecent = now - last < span
        let count = self.accounts.withLock { accounts in
            var count = 0
            for entry in accounts.values where entry.account.sweep(at: now, span: span, trustRecent: trustRecent) {
                count += 1
            }
            return count
        }
        self.active.store(count, ordering: .releasing)
        return count
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// How many more requests a connection of a tenant with `inFlight` requests in flight may
    /// hand over before it asks again; 0: it waits.
    ///
    /// Under its share, a connection takes up to half of it at once (at least ``minimumShare``),
    /// so that a pipelining client's read still goes over as one batch rather than a request at a
    /// time; the tenant's total may thus pass its share by that much per event loop.
    func allowance(_ inFlight: Int) -> Int {
        if self.window == 0 { return .max }
        if inFlight < self.minimumShare { return self.minimumShare }
        let active = self.activeTenants()
        if active <= 1 { return .max }
        let share = max(self.minimumShare, self.window / active)
        return inFlight < share ? max(self.minimumShare, share / 2) : 0
    }

    /// The charge of one tenant: its requests in flight, its waiting connections.
    final class Account: Sendable {
        let tenantID: String
        private let admission: TenantAdmission
        private let inFlightCount = Atomic<Int>(0)
        /// Set when it handed a request over; cleared by the sweep.
        private let recent = Atomic<Bool>(false)
        /// When a sweep last saw it active, in nanoseconds from the admission's creation.
        private let seenActive = Atomic<Int64>(Int64.min / 2)
        private let hasWaiters = Atomic<Bool>(false)
        private let waiters = Mutex(Deque<RequestGate>())

        fileprivate init(tenantID: String, admission: TenantAdmission) {
            self.tenantID = tenantID
            self.admission = admission
        }

        /// Requests handed over and not yet run.
        var inFlight: Int { self.inFlightCount.load(ordering: .sequentiallyConsistent) }

        /// How many requests a connection may hand over now before it asks again (0: it waits).
        var allowance: Int { self.admission.allowance(self.inFlight) }

        func charge(_ count: Int) {
            self.inFlightCount.wrappingAdd(count, ordering: .sequentiallyConsistent)
            if !self.recent.load(ordering: .relaxed) { self.recent.store(true, ordering: .relaxed) }
        }

        /// `count` charged requests ran (or were given back): the oldest waiting connection is
        /// woken if the tenant may now have more.
        func refund(_ count: Int) {
            guard count > 0 else { return }
            let left = self.inFlightCount.wrappingSubtract(count, ordering: .sequentiallyConsistent).newValue
            guard self.hasWaiters.load(ordering: .sequentiallyConsistent), self.admission.allowance(left) > 0 else {
                return
            }
            self.wakeNext()
        }

        /// A wake-up was not used (its connection no longer waited for it): the next waiting
        /// connection gets it, if the tenant may still have more.
        func passOn() {
            guard self.hasWaiters.load(ordering: .sequentiallyConsistent), self.allowance > 0 else { return }
            self.wakeNext()
        }

        /// Wakes the oldest waiting connection, if any.
        func wakeNext() {
            let gate = self.waiters.withLock { waiters -> RequestGate? in
                let first = waiters.popFirst()
                if waiters.isEmpty { self.hasWaiters.store(false, ordering: .sequentiallyConsistent) }
                return first
            }
            gate?.admitted(by: self)
        }

        /// `gate`'s connection waits for room.
        /// - Returns: 0 when it waits; else the allowance it may take at once after all (a request
        ///   ran meanwhile), so that no wake-up is lost between its check and its wait.
        func wait(_ gate: RequestGate) -> Int {
            self.waiters.withLock { waiters in
                if !waiters.contains(where: { $0 === gate }) { waiters.append(gate) }
                self.hasWaiters.store(true, ordering: .sequentiallyConsistent)
            }
            let allowance = self.allowance
            guard allowance > 0 else {
                ServerMetrics.fairShareWait()
                return 0
            }
            // Not in the queue any more: a refund popped it and its wake-up is on its way; it
            // waits for that rather than going on twice.
            return self.remove(gate) ? allowance : 0
        }

        /// Takes `gate` out of the queue. - Returns: whether it was there.
        @discardableResult
        func remove(_ gate: RequestGate) -> Bool {
            self.waiters.withLock { waiters in
                guard let index = waiters.firstIndex(where: { $0 === gate }) else { return false }
                waiters.remove(at: index)
                if waiters.isEmpty { self.hasWaiters.store(false, ordering: .sequentiallyConsistent) }
                return true
            }
        }

        /// Whether it is active at `now` (it has requests in flight, or handed one over since the
        /// sweep before, or was seen so within the last `span` nanoseconds).
        fileprivate func sweep(at now: Int64, span: Int64, trustRecent: Bool) -> Bool {
            let recent = self.recent.exchange(false, ordering: .relaxed)
            if (recent && trustRecent) || self.inFlight > 0 {
                self.seenActive.store(now, ordering: .relaxed)
                return true
            }
            return recent || now - self.seenActive.load(ordering: .relaxed) < span
        }
    }
}
