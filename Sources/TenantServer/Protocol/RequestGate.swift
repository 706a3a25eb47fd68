import Synchronization

/// What a connection's request handler (on its event loop) and the task that runs its commands
/// share: the bytes of requests read but not yet answered, and whether the client authenticated.
///
/// The handler stops parsing, and stops reading the socket, while more than ``bound`` bytes of
/// requests wait (``unauthenticatedBound`` before authentication), and, when a request breaks a
/// limit of unauthenticated clients while requests before it still wait, until they are all
/// answered (``requireIdle``): a pipelined `AUTH` thus takes effect before that request is judged,
/// as it does in Redis, which runs one command at a time. The task calls ``finished(_:)`` for
/// every request it took; when the handler waits, that wakes it.
///
/// Once the connection works in a tenant, each request is also charged to the tenant's
/// ``TenantAdmission/Account`` until it has run, and the handler waits while the tenant is at its
/// share (``waitForAdmission()``).
final class RequestGate: Sendable {
    /// Why the handler is woken.
    enum WakeUp {
        /// Requests were answered: the connection's own window has room.
        case window
        /// The tenant's account has room: a handler that does not use it passes it on
        /// (``TenantAdmission/Account/passOn()``), so that no wake-up is lost.
        case admission(TenantAdmission.Account)
    }

    /// The tenant account requests are charged to, and the requests handed over and not yet
    /// run: first `uncharged` (handed over before authentication, or before the last park or change
    /// of tenant: their charge was given back), then `charged`. The connection runs them in
    /// order, so ``finished(_:)`` pays the uncharged first.
    private struct Charge {
        var account: TenantAdmission.Account?
        var uncharged = 0
        var charged = 0
        /// The connection waits for its client to read its replies: nothing is charged meanwhile.
        var parked = false
    }

    /// The most bytes of parsed requests a connection holds before it stops reading; one
    /// request alone (up to `client-query-buffer-limit`) always passes.
    let bound: Int
    private let outstanding = Atomic<Int>(0)
    private let idleRequired = Atomic<Bool>(false)
    private let authenticatedFlag = Atomic<Bool>(false)
    private let wantsWakeUp = Atomic<Bool>(false)
    private let wakeUp: Mutex<(@Sendable (WakeUp) -> Void)?> = Mutex(nil)
    private let charge = Mutex(Charge())
    /// Set once the connection is given an account: until then (always, with shares off) a
    /// request costs no lock for the bookkeeping.
    private let charging = Atomic<Bool>(false)
    /// Requests handed over and not yet finished (what is outstanding when charging begins).
    private let outstandingRequests = Atomic<Int>(0)

    init(bound: Int) {
        self.bound = bound
    }

    /// Called by the handler when it is added, with what resumes it on its event loop, and with
    /// nil when it is removed (the closure holds the handler: the cycle must be broken).
    func onWakeUp(_ body: (@Sendable (WakeUp) -> Void)?) {
        self.wakeUp.withLock { $0 = body }
    }

    var isAuthenticated: Bool { self.authenticatedFlag.load(ordering: .sequentiallyConsistent) }

    /// The connection has authenticated: the wider limits apply from the next request on.
    func authenticated() {
        self.authenticatedFlag.store(true, ordering: .sequentiallyConsistent)
    }

    /// Bytes of requests handed over and not yet answered.
    var outstandingBytes: Int { self.outstanding.load(ordering: .sequentiallyConsistent) }

    /// The handler waits for every request handed over to be answered before it parses again.
    var requireIdle: Bool {
        get { self.idleRequired.load(ordering: .sequentiallyConsistent) }
        set { self.idleRequired.store(newValue, ordering: .sequentiallyConsistent) }
    }

    /// The handler may parse the next request.
    var mayParse: Bool {
        let outstanding = self.outstandingBytes
        if self.requireIdle { return outstanding == 0 }
        return outstanding <= (self.isAuthenticated ? self.bound : FixedLimits.unauthenticatedRequestBytes)
    }

    /// The handler hands a request over.
    func handedOver(_ cost: Int) {
        self.outstanding.wrappingAdd(cost, ordering: .sequentiallyConsistent)
        self.outstandingRequests.wrappingAdd(1, ordering: .relaxed)
        guard self.charging.load(ordering: .acquiring) else { return }
        self.charge.withLock { charge in
            guard let account = charge.account, !charge.parked else {
                charge.uncharged += 1
                return
            }
            charge.charged += 1
            account.charge(1)
        }
    }

    // MARK: - The tenant's share

    /// The connection now works in `account`'s tenant (nil: in none). What was charged to the
    /// previous one is given back; if the handler waited in the previous one's queue, it leaves it
    /// and is woken to ask the new one (the previous one's next waiter gets its turn).
    func setAccount(_ account: TenantAdmission.Account?) {
        let (previous, charged) = self.charge.withLock { charge in
            let previous = (charge.account, charge.charged)
            if account != nil && !self.charging.load(ordering: .acquiring) {
                // Charging begins: what is outstanding now was handed over uncharged.
                charge.uncharged = max(0, self.outstandingRequests.load(ordering: .relaxed))
                self.charging.store(true, ordering: .releasing)
            }
            charge.uncharged += charge.charged
            charge.charged = 0
            charge.account = account
            return previous
        }
        previous?.refund(charged)
        if let previous, previous !== account, previous.remove(self) {
            previous.passOn()
            self.admitted(by: previous)
        }
    }

    /// The account requests are charged to.
    var account: TenantAdmission.Account? { self.charge.withLock { $0.account } }

    /// What the tenant's share allows the handler now.
    enum Admission {
        /// Hand over up to this many requests, then ask again.
        case go(Int)
        /// Wait: the account wakes the handler through ``admitted(by:)``.
        case wait(TenantAdmission.Account)
    }

    /// Asks the tenant's account for room before the handler hands requests over; when there is
    /// none, the connection joins the tenant's queue of waiting connections.
    func waitForAdmission() -> Admission {
        guard let account = self.account else { return .go(.max) }
        let allowance = account.allowance
        if allowance > 0 { return .go(allowance) }
        let late = account.wait(self)
        return late > 0 ? .go(late) : .wait(account)
    }

    /// `account` woke this connection (from ``TenantAdmission/Account/wakeNext()``). A handler
    /// that is gone passes the wake-up on.
    func admitted(by account: TenantAdmission.Account) {
        guard let body = self.wakeUp.withLock({ $0 }) else {
            account.passOn()
            return
        }
        body(.admission(account))
    }

    /// The connection waits for its client to read its replies: what it has charged is given
    /// back, and nothing is charged until ``unpark()``, so a client that does not read holds no
    /// share of its tenant.
    func park() {
        let (account, charged) = self.charge.withLock { charge in
            defer {
                charge.uncharged += charge.charged
                charge.charged = 0
                charge.parked = true
            }
            return (charge.account, charge.charged)
        }
        account?.refund(charged)
    }

    /// The client read its replies: requests are charged again.
    func unpark() {
        self.charge.withLock { $0.parked = false }
    }

    /// The handler is gone: it leaves the tenant's queue of waiting connections (a wake-up
    /// already on its way is passed on by ``admitted(by:)`` or by the handler).
    func leaveAdmission() {
        self.account?.remove(self)
    }

    /// The handler cannot parse: it asks to be woken.
    /// - Returns: false when it may parse after all (the task finished meanwhile), so that no
    ///   wake-up is lost between its check and its request.
    func waitForWakeUp() -> Bool {
        self.wantsWakeUp.store(true, ordering: .sequentiallyConsistent)
        if self.mayParse {
            return !self.wantsWakeUp.exchange(false, ordering: .sequentiallyConsistent)
        }
        return true
    }

    /// The task answered (or queued the answer of) a request of `cost` bytes.
    func finished(_ cost: Int) {
        self.outstanding.wrappingSubtract(cost, ordering: .sequentiallyConsistent)
        self.outstandingRequests.wrappingSubtract(1, ordering: .relaxed)
        let account =
            !self.charging.load(ordering: .acquiring)
            ? nil
            : self.charge.withLock { charge -> TenantAdmission.Account? in
                if charge.uncharged > 0 {
                    charge.uncharged -= 1
                    return nil
                }
                guard charge.charged > 0 else { return nil }
                charge.charged -= 1
                return charge.account
            }
        account?.refund(1)
        guard self.wantsWakeUp.load(ordering: .sequentiallyConsistent), self.mayParse,
            self.wantsWakeUp.exchange(false, ordering: .sequentiallyConsistent)
        else { return }
        self.wakeUp.withLock { $0 }?(.window)
    }
}
