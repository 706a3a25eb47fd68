import RESP
import Synchronization
import TenantEngine

/// A connection's side of pub/sub: its subscriptions, and the pushes tenants deliver on their
/// own executors, which go to the connection's channel handler (``PushSink``).
final class ConnectionSubscriber: MessageSubscriber {
    /// One subscription: the tenant and room, and the name the client used for it.
    struct Subscription: Sendable {
        let tenant: Tenant
        let room: String
        let channel: String
    }

    private struct State {
        var version: RESPVersion
        /// By ``Tenant/subscriptionKey(room:)``: one per tenant and room, whatever the name form.
        var subscriptions: [String: Subscription] = [:]
    }

    private let queue: ReplyQueue<Connection.Slot>
    private let sink: PushSink?
    private let state: Mutex<State>
    private let disconnect: @Sendable () -> Void
    private let hangUp: @Sendable () -> Void

    /// - Parameters:
    ///   - queue: the connection's replies (its last error, when its tenant leaves).
    ///   - sink: where pushes go (nil: into `queue`, for a connection without a handler of its own).
    ///   - version: the protocol of the pushes.
    ///   - disconnect: closes the connection of a subscriber too far behind.
    ///   - hangUp: closes the connection, once what is queued had time to be written.
    init(
        queue: ReplyQueue<Connection.Slot>,
        sink: PushSink? = nil,
        version: RESPVersion,
        disconnect: @escaping @Sendable () -> Void,
        hangUp: @escaping @Sendable () -> Void = {}
    ) {
        self.queue = queue
        self.sink = sink
        self.state = Mutex(State(version: version))
        self.disconnect = disconnect
        self.hangUp = hangUp
    }

    /// Where the connection is between reading requests and queuing their replies, so that a
    /// last error told from outside never takes the place of a reply.
    private struct Telling {
        /// Requests read are being run: their replies are not all queued yet.
        var busy = false
        /// The error to tell once they are.
        var pending: String?
        var told = false
    }
    private let telling = Mutex(Telling())

    /// Sends the connection one last error (its tenant left this server) and closes it: at once
    /// when it is idle, else after the replies of the requests it is running.
    func tellAndClose(error message: String) {
        let version = self.state.withLock { $0.version }
        let now = self.telling.withLock { telling -> Bool in
            guard !telling.told else { return false }
            guard !telling.busy else {
                telling.pending = message
                return false
            }
            telling.told = true
            let slot = Connection.Slot.close(.error(message), version)
            _ = self.queue.pushNow(slot, weight: slot.weight)
            return true
        }
        if now { self.hangUp() }
    }

    /// The connection starts on requests it read. - Returns: false once it was told to close
    /// (it runs nothing more: no command may run whose reply the client would never see).
    func beginRequests() -> Bool {
        self.telling.withLock { telling in
            guard !telling.told else { return false }
            telling.busy = true
            return true
        }
    }

    /// Their replies are queued. - Returns: the error the connection must still be told, after
    /// which it closes.
    func endRequests() -> String? {
        self.telling.withLock { telling in
            telling.busy = false
            guard let message = telling.pending else { return nil }
            telling.pending = nil
            telling.told = true
            return message
        }
    }

    /// The protocol pushes are encoded in (the connection's, after HELLO), when they go through
    /// the queue (with a sink, the handler encodes them: ``ConnectionOutput/pushVersion(_:)``).
    func setVersion(_ version: RESPVersion) {
        self.state.withLock { $0.version = version }
    }

    /// How many channels the connection is subscribed to.
    var count: Int { self.state.withLock { $0.subscriptions.count } }

    /// The subscriptions, by key.
    var subscriptions: [String: Subscription] { self.state.withLock { $0.subscriptions } }

    /// Records a subscription before its tenant confirms it (the confirmation counts it).
    /// - Returns: the one it replaced.
    @discardableResult
    func record(_ subscription: Subscription, key: String) -> Subscription? {
        let (previous, count) = self.state.withLock { state in
            (state.subscriptions.updateValue(subscription, forKey: key), state.subscriptions.count)
        }
        self.sink?.setSubscriptions(count)
        return previous
    }

    /// Records `subscription` while its tenant subscribes (`subscribe`), and takes it back (the
    /// one it replaced kept) when the tenant refuses.
    func recording(_ subscription: Subscription, key: String, _ subscribe: () throws -> Void) rethrows {
        let previous = self.record(subscription, key: key)
        do {
            try subscribe()
        } catch {
            self.undo(key: key, previous: previous)
            throw error
        }
    }

    /// ``recording(_:key:_:)`` for a tenant reached with `await`.
    func recording(_ subscription: Subscription, key: String, _ subscribe: () async throws -> Void) async rethrows {
        let previous = self.record(subscription, key: key)
        do {
            try await subscribe()
        } catch {
            self.undo(key: key, previous: previous)
            throw error
        }
    }

    private func undo(key: String, previous: Subscription?) {
        if let previous {
            self.record(previous, key: key)
        } else {
            self.forget(key: key)
        }
    }

    /// Forgets a subscription. - Returns: it, if there was one.
    @discardableResult
    func forget(key: String) -> Subscription? {
        let (removed, count) = self.state.withLock { state in
            (state.subscriptions.removeValue(forKey: key), state.subscriptions.count)
        }
        self.sink?.setSubscriptions(count)
        return removed
    }

    func deliver(_ event: SubscriptionEvent) -> Bool {
        let (value, version): (RESPValue, RESPVersion) = self.state.withLock { state in
            switch event {
            case .subscribed(let channel, _):
                return (
                    .push([.bulkString("subscribe"), .bulkString(channel), .integer(Int64(state.subscriptions.count))]),
                    state.version
                )
            case .unsubscribed(let channel, _):
                return (
                    .push([
                        .bulkString("unsubscribe"), .bulkString(channel), .integer(Int64(state.subscriptions.count)),
                    ]),
                    state.version
                )
            case .message(let channel, _, let payload):
                return (
                    .push([.bulkString("message"), .bulkString(channel), .bulkString(payload)]),
                    state.version
                )
            }
        }
        if let sink = self.sink { return sink.push(value, overLimit: self.disconnect) }
        let slot = Connection.Slot.value(value, version)
        guard self.queue.pushNow(slot, weight: slot.weight) else {
            self.disconnect()
            return false
        }
        return true
    }
}

/// The connections by tenant context, so the ones working in a tenant can be told when it is
/// handed to another server.
final class TenantContexts: Sendable {
    private let byTenant = Mutex<[String: [ObjectIdentifier: ConnectionSubscriber]]>([:])

    /// Records that `subscriber`'s connection works in `id` now (nil: in none), instead of `previous`.
    func move(_ subscriber: ConnectionSubscriber, from previous: String?, to id: String?) {
        guard previous != id else { return }
        let key = ObjectIdentifier(subscriber)
        self.byTenant.withLock { byTenant in
            if let previous {
                byTenant[previous]?.removeValue(forKey: key)
                if byTenant[previous]?.isEmpty == true { byTenant[previous] = nil }
            }
            if let id { byTenant[id, default: [:]][key] = subscriber }
        }
    }

    /// Tells every connection working in `id` and closes it.
    func tell(id: String, error: String) {
        let subscribers = self.byTenant.withLock { $0.removeValue(forKey: id) } ?? [:]
        for subscriber in subscribers.values { subscriber.tellAndClose(error: error) }
    }
}
