import NIOCore
import RESP
import Synchronization

/// Where a connection's pub/sub pushes go: straight to its channel handler, on the connection's
/// event loop, not through the connection's task.
///
/// A tenant delivers its pushes on its own loop. When that is the connection's, the push is
/// encoded into the handler's outbox there and then, and leaves with the loop's turn; from
/// another loop it takes one hop. Pushes of one tenant thus keep its order (one loop, first in
/// first out), and a SUBSCRIBE the lane runs has its confirmation among the lane's replies, in
/// request order. Replies the connection's task sends pass the handler too; the task runs
/// SUBSCRIBE and UNSUBSCRIBE only once its earlier replies have reached the handler
/// (``ConnectionOutput/barrier(_:)``), so a confirmation never overtakes them, and a HELLO's
/// change of protocol reaches the handler right behind its reply
/// (``ConnectionOutput/pushVersion(_:)``): the handler encodes every push in the protocol the
/// client is in when the push is written.
///
/// `client-output-buffer-limit pubsub` is kept by the handler against what the connection holds
/// unsent (its outbox and the channel's buffer): over it, the push is refused and the
/// connection closed, as Redis closes such a subscriber. What a connection holds for its pushes
/// is counted in `maxmemory-clients` (``noteHeld(_:)``).
final class PushSink: Sendable {
    /// What became of a push.
    enum Outcome: Sendable {
        case accepted
        /// Over `client-output-buffer-limit pubsub`: the subscriber is disconnected.
        case overLimit
        /// The connection is gone, or closing after its last reply.
        case gone
    }

    let eventLoop: any EventLoop
    /// Pushes from other loops come through it: one hop for all that came meanwhile.
    private let relay: PushRelay
    private let handler: NIOLoopBoundBox<RESPRequestHandler?>
    /// Set once a push was refused: later ones are refused without a hop.
    private let refused = Atomic<Bool>(false)
    /// How many channels the connection is subscribed to (the idle timeout spares subscribers).
    private let subscriptions = Atomic<Int>(0)
    /// The bytes the connection holds unsent as the handler last measured them while it had
    /// pushes, and the guard they are counted in (nil once the connection left it).
    private let accounting = Mutex<(memory: ClientMemoryGuard?, held: Int)>((nil, 0))

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.relay = PushRelay.of(eventLoop)
        self.handler = .makeEmptyBox(valueType: RESPRequestHandler.self, eventLoop: eventLoop)
    }

    /// The handler pushes go to (nil once it is removed: the box would keep it alive).
    func attach(_ handler: RESPRequestHandler?) {
        self.handler.value = handler
    }

    /// Whether the connection has subscriptions.
    var hasSubscriptions: Bool { self.subscriptions.load(ordering: .relaxed) > 0 }

    func setSubscriptions(_ count: Int) {
        self.subscriptions.store(count, ordering: .relaxed)
    }

    /// Counts what the connection holds for its pushes in `memory` (`maxmemory-clients`).
    func account(to memory: ClientMemoryGuard) {
        self.accounting.withLock { $0.memory = memory }
    }

    /// The bytes counted for the connection's pushes now.
    var heldBytes: Int { self.accounting.withLock { $0.held } }

    /// The handler measured what the connection holds unsent.
    func noteHeld(_ bytes: Int) {
        let (memory, delta) = self.accounting.withLock { state -> (ClientMemoryGuard?, Int) in
            guard let memory = state.memory else { return (nil, 0) }
            let delta = bytes - state.held
            state.held = bytes
            return (memory, delta)
        }
        memory?.add(delta)
    }

    /// The connection leaves the guard. - Returns: the bytes still counted, for the guard to
    /// take back; nothing is counted after.
    func stopAccounting() -> Int {
        self.accounting.withLock { state in
            defer { state = (nil, 0) }
            return state.held
        }
    }

    /// Hands the handler a push, which it encodes in the connection's protocol.
    /// - Parameter overLimit: called once, when a push is refused for the output limit.
    /// - Returns: false once a push was refused (the tenant then drops the subscriber). From
    ///   another loop, the refusal of this push is known only after its hop.
    func push(_ value: RESPValue, overLimit: @escaping @Sendable () -> Void) -> Bool {
        guard !self.refused.load(ordering: .relaxed) else { return false }
        if self.eventLoop.inEventLoop { return self.deliver(value, overLimit: overLimit) }
        self.relay.send(value, to: self, overLimit: overLimit)
        return true
    }

    /// A push on the connection's loop: to the handler.
    fileprivate func deliver(_ value: RESPValue, overLimit: @Sendable () -> Void) -> Bool {
        guard !self.refused.load(ordering: .relaxed) else { return false }
        let outcome = self.handler.value?.pushed(value) ?? .gone
        switch outcome {
        case .accepted:
            return true
        case .overLimit:
            if !self.refused.exchange(true, ordering: .relaxed) { overLimit() }
            return false
        case .gone:
            self.refused.store(true, ordering: .relaxed)
            return false
        }
    }
}

/// The pushes for one event loop's connections from tenants on other loops: they wait here, in
/// the order they came, and one hop takes every push that came meanwhile (a POST reaching fifty
/// subscribers on another loop costs one hop, not fifty, and one wake-up of that loop).
final class PushRelay: Sendable {
    private struct Pending {
        var pushes: [(sink: PushSink, value: RESPValue, overLimit: @Sendable () -> Void)] = []
        var scheduled = false
    }

    private let loop: any EventLoop
    private let pending = Mutex(Pending())

    private init(loop: any EventLoop) {
        self.loop = loop
    }

    private static let relays = PerLoop { PushRelay(loop: $0) }

    /// The relay of `loop` (one per loop, for the process's life).
    static func of(_ loop: any EventLoop) -> PushRelay { self.relays.of(loop) }

    /// Queues a push for `sink`'s handler; the first since the last hop schedules the next.
    func send(_ value: RESPValue, to sink: PushSink, overLimit: @escaping @Sendable () -> Void) {
        let schedule = self.pending.withLock { pending -> Bool in
            pending.pushes.append((sink, value, overLimit))
            guard !pending.scheduled else { return false }
            pending.scheduled = true
            return true
        }
        if schedule { self.loop.execute { self.drain() } }
    }

    private func drain() {
        let pushes = self.pending.withLock { pending in
            defer {
                pending.pushes = []
                pending.scheduled = false
            }
            return pending.pushes
        }
        for push in pushes { _ = push.sink.deliver(push.value, overLimit: push.overLimit) }
    }
}
