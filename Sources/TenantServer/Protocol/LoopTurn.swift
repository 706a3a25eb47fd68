import DequeModule
import NIOCore
import Synchronization
import TenantEngine
import WAL

/// The end of an event loop's turn, where the POSTs its connections ran synchronously are
/// written and answered, and every connection's lane replies are written, as Redis writes its
/// AOF in `beforeSleep` and only then its clients' replies.
///
/// The first record a turn appends to a tenant's log schedules the end of the turn (a task on the
/// loop, which NIO runs after the reads of this turn): every dirty log is written with one
/// write(2) (`everysec` and `no`), its durable messages become visible, and each connection that
/// waits on it writes its replies. When the log cannot be written on the loop without blocking
/// (`always`, whose fdatasync runs off the loop; a new segment; another flush under way), the
/// log's queue writes it, with one group commit for every connection of every loop, and the
/// loop finishes the turn when it calls back.
///
/// `@unchecked Sendable`: every property is touched only on `loop` (checked with assertions).
final class LoopTurn: @unchecked Sendable {
    /// A connection waiting on a tenant's log.
    protocol Waiter: AnyObject {
        /// The tenant's log is written up to `upTo` (or failed there with `error`): answer what
        /// can be answered.
        func logWritten(_ tenant: Tenant, upTo: UInt64, error: TenantError?)
        /// The turn ended: write what waits (replies of commands that wrote nothing).
        func turnEnded()
        /// The turn the waiter was last registered in.
        var turnMark: UInt64 { get set }
        /// The tenants it was registered for in that turn (a waiter may append to several
        /// tenants' logs in one turn: path-form rooms), newest last.
        var turnTenants: [ObjectIdentifier] { get set }
        /// The turn the waiter last asked to be flushed in.
        var flushMark: UInt64 { get set }
        /// Its tenant's share of the turn came back: parse what waits.
        func shareResumed()
    }

    /// A tenant's lane requests on this loop, for its share of each turn (on the loop only).
    final class Account {
        fileprivate let key: ObjectIdentifier
        /// Dropped by the turn (inactive, nothing held): a connection that kept it asks anew.
        fileprivate(set) var retired = false
        /// The turn ``ran`` counts in.
        fileprivate var turn: UInt64 = 0
        /// Lane requests the tenant ran in that turn.
        fileprivate var ran = 0
        /// When it last ran one, at a turn's end (uptime in nanoseconds).
        fileprivate var lastActive: UInt64 = 0
        fileprivate var isRecent = false
        /// Connections held back for its share, oldest first, that ran nothing in the turn they
        /// were held in.
        fileprivate var held = Deque<any Waiter>()
        /// Those that used the share of the turn they were held in: they go after the others.
        fileprivate var heldAfterRunning = Deque<any Waiter>()

        var isHolding: Bool { !self.held.isEmpty || !self.heldAfterRunning.isEmpty }

        init(key: ObjectIdentifier) {
            self.key = key
        }
    }

    /// The lane requests a loop runs in one turn while several tenants are active on it, shared
    /// between them (each gets at least ``FixedLimits/minimumTurnShare``). A tenant alone runs as much as its
    /// connections bring: the shares cost nothing until another tenant is active. On by default
    /// (issue 21, point 4: on if they cost a one-tenant flood at most 10%); measured with the
    /// server on a core of its own, they cost it nothing measurable (docs/benchmarks.md, "Issue
    /// 21, seventh step").
    static let defaultTurnBudget = 64
    /// The budget of each turn (`ServerLimits.turnBudget`, set by the loop's connections; 0 = no
    /// shares).
    var turnBudget = LoopTurn.defaultTurnBudget

    let loop: any EventLoop
    private var scheduled = false
    /// Held connections will resume after the loop's next poll (``AfterPoll``).
    private var resumeQueued = false
    private var number: UInt64 = 1
    private var dirty: [ObjectIdentifier: (tenant: Tenant, waiters: [any Waiter])] = [:]
    private var flushes: [any Waiter] = []
    private var accounts: [ObjectIdentifier: Account] = [:]
    /// Accounts that ran a request this turn.
    private var seen: [Account] = []
    /// When each account was marked active, oldest first: an entry is the account's latest when
    /// its stamp is the account's ``Account/lastActive`` (older ones are skipped). Each turn pops
    /// only what expired, so a turn costs what ran in it, not the number of active tenants (ten
    /// thousand with `tenant-bench --spread`, where a scan of them all was 3% of a POST).
    private var activity = Deque<(account: Account, stamp: UInt64)>()
    /// Accounts active within ``FixedLimits/turnShareActiveSpan``.
    private var activeCount = 0
    /// Accounts with connections held back.
    private var holding: [Account] = []
    /// Each active tenant's share of a turn (`Int.max` while one tenant is active).
    private(set) var share = Int.max

    private init(loop: any EventLoop) {
        self.loop = loop
    }

    private static let turns = PerLoop { LoopTurn(loop: $0) }

    /// The turn of `loop` (one per loop, for the process's life).
    static func of(_ loop: any EventLoop) -> LoopTurn { self.turns.of(loop) }

    /// `waiter` appended to `tenant`'s log in this turn: at the end of the turn it is told.
    func appended(to tenant: Tenant, by waiter: any Waiter) {
        self.loop.assertInEventLoop()
        let key = ObjectIdentifier(tenant)
        defer { self.schedule() }
        if waiter.turnMark != self.number {
            waiter.turnMark = self.number
            waiter.turnTenants.removeAll(keepingCapacity: true)
        } else if waiter.turnTenants.last == key || waiter.turnTenants.contains(key) {
            // Registered for this tenant in this turn already (the last one: the usual case, one
            // tenant per connection). The list is the waiter's own, at most a turn's requests.
            return
        }
        waiter.turnTenants.append(key)
        if self.dirty[key] == nil {
            self.dirty[key] = (tenant, [waiter])
        } else {
            self.dirty[key]!.waiters.append(waiter)
        }
    }

    /// The account of `tenant` on this loop (a connection keeps it while its lane's tenant is the
    /// same; closed tenants' accounts go with their last connection's lane).
    func account(for tenant: Tenant) -> Account {
        self.account(key: ObjectIdentifier(tenant))
    }

    /// The account kept under `key` (a tenant's identity), made if there is none.
    func account(key: ObjectIdentifier) -> Account {
        self.loop.assertInEventLoop()
        if let account = self.accounts[key] { return account }
        let account = Account(key: key)
        self.accounts[key] = account
        return account
    }

    /// Whether the account's tenant has used its share of this turn: its connection then waits
    /// for the next turn (``hold(_:for:afterRunning:)``).
    ///
    /// While the tenant has connections held for a resume after the next poll, its other
    /// connections wait behind them: the held ones go first in the new turn, oldest first.
    func isOverShare(_ account: Account) -> Bool {
        (account.turn == self.number && account.ran >= self.share) || (self.resumeQueued && account.isHolding)
    }

    /// Connections held back for their tenant's share on this loop, since it started (INFO's
    /// `lane_share_holds` is the sum over the loops).
    private(set) var holds: UInt64 = 0

    /// The account's tenant ran a lane request.
    func ran(_ account: Account) {
        if account.turn != self.number {
            account.turn = self.number
            account.ran = 0
            self.seen.append(account)
        }
        account.ran += 1
    }

    /// The number of the turn under way.
    var current: UInt64 { self.number }

    /// Holds `waiter` back until its tenant's share of a later turn: connections of the tenant
    /// resume in the order they were held, those that ran in this turn after the others (the
    /// tenant's connections take turns), as long as the share lasts.
    func hold(_ waiter: any Waiter, for account: Account, afterRunning: Bool) {
        self.loop.assertInEventLoop()
        self.holds &+= 1
        ServerStats.shared.laneShareHolds.wrappingAdd(1, ordering: .relaxed)
        if !account.isHolding { self.holding.append(account) }
        if afterRunning {
            account.heldAfterRunning.append(waiter)
        } else {
            account.held.append(waiter)
        }
        self.schedule()
    }

    /// `waiter` has replies to write: at the end of the turn, with every other connection's, so
    /// that a client with many connections is woken once for many replies (as Redis writes its
    /// clients' replies in `beforeSleep`).
    func flushAtEnd(_ waiter: any Waiter) {
        self.loop.assertInEventLoop()
        guard waiter.flushMark != self.number else { return }
        waiter.flushMark = self.number
        self.flushes.append(waiter)
        self.schedule()
    }

    private func schedule() {
        guard !self.scheduled else { return }
        self.scheduled = true
        self.loop.execute { self.end() }
    }

    /// Counts the tenants active within ``FixedLimits/turnShareActiveSpan`` and sets the share of the next turn.
    private func updateShares() {
        guard self.turnBudget > 0 else { return }
        if !self.seen.isEmpty || !self.activity.isEmpty {
            let now = NIODeadline.now().uptimeNanoseconds
            for account in self.seen {
                account.lastActive = now
                if !account.isRecent {
                    account.isRecent = true
                    self.activeCount += 1
                }
                self.activity.append((account, now))
            }
            self.seen.removeAll(keepingCapacity: true)
            while let oldest = self.activity.first, now &- oldest.stamp > FixedLimits.turnShareActiveSpan {
                self.activity.removeFirst()
                let account = oldest.account
                // A later entry of the account is still to come: it stays active.
                guard account.lastActive == oldest.stamp, account.isRecent else { continue }
                account.isRecent = false
                self.activeCount -= 1
                if !account.isHolding { self.retire(account) }
            }
            let active = self.activeCount
            self.share = active > 1 ? max(FixedLimits.minimumTurnShare, self.turnBudget / active) : Int.max
        }
        // Accounts made but never run nor held (a connection routed once and closed): swept when
        // they outnumber the live ones, so the sweep costs each account O(1) over its life.
        if self.accounts.count > 64 + 2 * (self.activeCount + self.holding.count) {
            self.accounts = self.accounts.filter { _, account in
                if account.isRecent || account.isHolding { return true }
                account.retired = true
                return false
            }
        }
    }

    /// Drops an account neither active nor holding anyone: a connection that kept it asks anew.
    private func retire(_ account: Account) {
        account.retired = true
        if self.accounts[account.key] === account { self.accounts[account.key] = nil }
    }

    /// The accounts the turn keeps (active, holding, or not swept yet); for tests.
    var accountCount: Int { self.accounts.count }

    /// The tenants active within ``FixedLimits/turnShareActiveSpan``; for tests.
    var activeTenants: Int { self.activeCount }

    /// Held connections resume once the loop has polled its sockets again: what other tenants
    /// sent meanwhile is read first, in the kernel's order, instead of waiting for every turn
    /// the held connections' buffered requests make (NIO runs tasks until none is left).
    private func queueResume() {
        guard !self.holding.isEmpty, !self.resumeQueued else { return }
        self.resumeQueued = true
        AfterPoll.of(self.loop).run {
            self.resumeQueued = false
            self.resumeHeld()
        }
    }

    /// Lets held connections go on in the new turn, oldest first, each tenant's while its share
    /// lasts; a connection that uses the rest of it and is held again goes behind the others.
    private func resumeHeld() {
        guard !self.holding.isEmpty else { return }
        let holding = self.holding
        self.holding.removeAll(keepingCapacity: true)
        for account in holding {
            var waiting = account.held
            waiting.append(contentsOf: account.heldAfterRunning)
            account.held.removeAll()
            account.heldAfterRunning.removeAll()
            while !self.isOverShare(account), let waiter = waiting.popFirst() {
                waiter.shareResumed()
            }
            guard !waiting.isEmpty else {
                // Held past its activity: nothing keeps it now (a resumed connection that runs
                // again asks for a new one).
                if !account.isRecent && !account.isHolding && !account.retired && account.turn != self.number {
                    self.retire(account)
                }
                continue
            }
            // Not reached in this turn: first in the next.
            if !account.isHolding { self.holding.append(account) }
            account.held = waiting + account.held
            self.schedule()
        }
    }

    /// Writes every dirty log and answers its waiters.
    private func end() {
        self.loop.assertInEventLoop()
        self.scheduled = false
        self.number &+= 1
        let work = self.dirty
        self.dirty.removeAll(keepingCapacity: true)
        let flushes = self.flushes
        self.flushes.removeAll(keepingCapacity: true)
        self.updateShares()
        defer {
            // After the logs: replies behind a POST this turn wrote go out with it.
            for waiter in flushes { waiter.turnEnded() }
            self.queueResume()
        }
        for (_, entry) in work {
            let tenant = entry.tenant
            if tenant.writeTurnOnLoop() {
                for waiter in entry.waiters { waiter.logWritten(tenant, upTo: .max, error: nil) }
                continue
            }
            let upTo = tenant.lastAppendedLSN
            let loop = self.loop
            let waiters = NIOLoopBound(entry.waiters, eventLoop: loop)
            tenant.whenDurable(upTo) { error in
                loop.execute {
                    let failure = tenant.settleOnLoop(error)
                    for waiter in waiters.value { waiter.logWritten(tenant, upTo: upTo, error: failure) }
                }
            }
        }
    }
}
