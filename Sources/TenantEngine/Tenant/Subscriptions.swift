/// What a tenant hands a subscriber, in order.
public enum SubscriptionEvent: Sendable {
    /// The reply to SUBSCRIBE for one channel; `key` names the tenant and room, whatever name
    /// form the channel used (``Tenant/subscriptionKey(room:)``).
    case subscribed(channel: String, key: String)
    /// The reply to UNSUBSCRIBE for one channel (`key` nil for a channel never subscribed).
    case unsubscribed(channel: String, key: String?)
    /// A message posted to a subscribed room, with its pub/sub payload (``Message/jsonPayload``,
    /// made once per message however many subscribers it reaches).
    case message(channel: String, message: Message, payload: String)
}

/// A connection that receives pushes. A tenant calls ``deliver(_:)`` on its own executor, in
/// order, and never waits on it.
public protocol MessageSubscriber: AnyObject, Sendable {
    /// Takes one event; false when the subscriber cannot take more (gone, or too far behind):
    /// the tenant then drops it.
    func deliver(_ event: SubscriptionEvent) -> Bool
}

/// The subscribers of a tenant's rooms.
struct Subscriptions {
    struct Entry {
        var subscriber: any MessageSubscriber
        var principal: Principal
        var channel: String
    }

    private(set) var rooms: [String: [ObjectIdentifier: Entry]] = [:]

    mutating func add(room: String, entry: Entry) {
        self.rooms[room, default: [:]][ObjectIdentifier(entry.subscriber)] = entry
    }

    @discardableResult
    mutating func remove(room: String, subscriber: any MessageSubscriber) -> Entry? {
        let removed = self.rooms[room]?.removeValue(forKey: ObjectIdentifier(subscriber))
        if self.rooms[room]?.isEmpty == true { self.rooms[room] = nil }
        return removed
    }

    mutating func closeAll() {
        self.rooms = [:]
    }
}
