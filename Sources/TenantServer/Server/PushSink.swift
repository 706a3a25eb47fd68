import NIOCore
import Synchronization

/// Where a connection's pub/sub pushes go: straight to its channel handler, on the connection's
/// event loop, not through the connection's task.
///
/// A tenant delivers its pushes on its own loop. When that is the connection's, the push is
/// queued in the handler's outbox there and then, and leaves with the loop's turn; from another
/// loop it takes one hop. Pushes of one tenant thus keep its order (one loop, first in first
/// out), and a SUBSCRIBE the lane runs has its confirmation among the lane's replies, in request
/// order. Replies the connection's task sends pass the handler too; the task runs a command that
/// delivers (the SUBSCRIBE family) only once its earlier replies have reached the handler
/// (``ConnectionOutput/barrier(_:)``), so a confirmation never overtakes them.
///
/// `client-output-buffer-limit pubsub` is kept by the handler against what the connection holds
/// unsent (its outbox and the channel's buffer): over it, the push is refused and the
/// connection closed, as Redis closes such a subscriber.
final class PushSink: Sendable {
    /// What became of a push.
    enum Outcome: Sendable {
        case accepted
        /// Over `client-output-buffer-limit pubsub`: the subscriber is disconnected.
        case overLimit
        /// The connection is gone.
        case gone
    }

    let eventLoop: any EventLoop
    private let handler: NIOLoopBoundBox<RESPRequestHandler?>
    /// Set once a push was refused: later ones are refused without a hop.
    private let refused = Atomic<Bool>(false)
    /// How many channels the connection is subscribed to (the idle timeout spares subscribers).
    private let subscriptions = Atomic<Int>(0)

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
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

    /// Hands the handler an encoded push.
    /// - Parameter overLimit: called once, when a push is refused for the output limit.
    /// - Returns: false once a push was refused (the tenant then drops the subscriber). From
    ///   another loop, the refusal of this push is known only after its hop.
    func push(_ bytes: ByteBuffer, overLimit: @escaping @Sendable () -> Void) -> Bool {
        guard !self.refused.load(ordering: .relaxed) else { return false }
        if self.eventLoop.inEventLoop { return self.deliver(bytes, overLimit: overLimit) }
        self.eventLoop.execute { _ = self.deliver(bytes, overLimit: overLimit) }
        return true
    }

    private func deliver(_ bytes: ByteBuffer, overLimit: @Sendable () -> Void) -> Bool {
        guard !self.refused.load(ordering: .relaxed) else { return false }
        let outcome = self.handler.value?.pushed(bytes) ?? .gone
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
