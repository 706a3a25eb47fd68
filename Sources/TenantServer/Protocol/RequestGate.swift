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
final class RequestGate: Sendable {
    /// The most bytes of parsed requests a connection holds before it stops reading; one
    /// request alone (up to `client-query-buffer-limit`) always passes.
    let bound: Int
    /// The same before authentication.
    static let unauthenticatedBound = 64 << 10
    private let outstanding = Atomic<Int>(0)
    private let idleRequired = Atomic<Bool>(false)
    private let authenticatedFlag = Atomic<Bool>(false)
    private let subscribedFlag = Atomic<Bool>(false)
    private let wantsWakeUp = Atomic<Bool>(false)
    private let wakeUp: Mutex<(@Sendable () -> Void)?> = Mutex(nil)

    init(bound: Int) {
        self.bound = bound
    }

    /// Called by the handler when it is added, with what resumes it on its event loop, and with
    /// nil when it is removed (the closure holds the handler: the cycle must be broken).
    func onWakeUp(_ body: (@Sendable () -> Void)?) {
        self.wakeUp.withLock { $0 = body }
    }

    var isAuthenticated: Bool { self.authenticatedFlag.load(ordering: .sequentiallyConsistent) }

    /// The connection has authenticated: the wider limits apply from the next request on.
    func authenticated() {
        self.authenticatedFlag.store(true, ordering: .sequentiallyConsistent)
    }

    /// Whether the connection has subscriptions (the idle timeout spares subscribers, as Redis's does).
    var isSubscribed: Bool {
        get { self.subscribedFlag.load(ordering: .relaxed) }
        set { self.subscribedFlag.store(newValue, ordering: .relaxed) }
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
        return outstanding <= (self.isAuthenticated ? self.bound : Self.unauthenticatedBound)
    }

    /// The handler hands a request over.
    func handedOver(_ cost: Int) {
        self.outstanding.wrappingAdd(cost, ordering: .sequentiallyConsistent)
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
        guard self.wantsWakeUp.load(ordering: .sequentiallyConsistent), self.mayParse,
            self.wantsWakeUp.exchange(false, ordering: .sequentiallyConsistent)
        else { return }
        self.wakeUp.withLock { $0 }?()
    }
}
