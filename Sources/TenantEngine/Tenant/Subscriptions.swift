/// What a tenant hands a subscriber, in order.
public enum SubscriptionEvent: Sendable {
    /// The reply to SUBSCRIBE for one channel; `key` names the tenant and room, whatever name
    /// form the channel used (``Tenant/subscriptionKey(room:)``).
    case subscribed(channel: String, key: String)
    /// The reply to UNSUBSCRIBE for one channel (`key` nil for a channel never subscribed).
    case unsubscribed(channel: String, key: String?)
    /// A message posted to a subscribed room: its JSON payload.
    case message(channel: String, payload: String)
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

extension Message {
    /// The pub/sub payload: `{"seq":..,"ts":..,"user":"..","text":".."}`.
    var jsonPayload: String {
        "{\"seq\":\(self.seq),\"ts\":\(self.timestamp),\"user\":\(Self.jsonString(self.user)),\"text\":\(Self.jsonString(self.text))}"
    }

    /// A JSON string literal, escaped as RFC 8259 asks.
    static func jsonString(_ text: String) -> String {
        var out = "\""
        out.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
        return out
    }
}
