extension Tenant {
    /// Subscribes to a room: the `subscribed` event is delivered at once, on this executor, so
    /// every message applied after it follows it.
    /// - Parameters:
    ///   - principal: any role may subscribe.
    ///   - room: a valid room name.
    ///   - channel: the name the client used (a room, or its path form), echoed in every push.
    ///   - subscriber: the connection.
    public func subscribe(
        _ principal: Principal,
        room: String,
        channel: String,
        subscriber: any MessageSubscriber
    ) throws {
        _ = try self.authorize(principal, .read)
        guard Names.isValidRoom(room) else { throw Self.invalidRoom }
        self.applyDurable()
        self.subscriptions.add(room: room, entry: .init(subscriber: subscriber, principal: principal, channel: channel))
        if !subscriber.deliver(.subscribed(channel: channel, key: self.subscriptionKey(room: room))) {
            self.subscriptions.remove(room: room, subscriber: subscriber)
        }
    }

    /// Unsubscribes from a room; the `unsubscribed` event is delivered at once.
    public func unsubscribe(room: String, channel: String, subscriber: any MessageSubscriber) {
        self.subscriptions.remove(room: room, subscriber: subscriber)
        _ = subscriber.deliver(.unsubscribed(channel: channel, key: self.subscriptionKey(room: room)))
    }

    /// What identifies a subscription: the tenant and the room, whatever name form the client used
    /// (`general` or `/tenant/<id>/general` are one subscription).
    public nonisolated func subscriptionKey(room: String) -> String {
        self.id + "/" + room
    }

    /// Drops a subscriber from every room, without events (its connection is gone).
    public func drop(_ subscriber: any MessageSubscriber, rooms: [String]) {
        for room in rooms { self.subscriptions.remove(room: room, subscriber: subscriber) }
    }

    /// Pushes an applied message to its room's subscribers whose credential still holds.
    func publish(room: String, message: Message) {
        guard let entries = self.subscriptions.rooms[room] else { return }
        let payload = message.jsonPayload
        for entry in entries.values {
            let allowed = (try? self.authorize(entry.principal, .read)) != nil
            if !allowed
                || !entry.subscriber.deliver(.message(channel: entry.channel, message: message, payload: payload))
            {
                self.subscriptions.remove(room: room, subscriber: entry.subscriber)
            }
        }
    }

    public static let invalidRoom = TenantError.invalid("room name must be 1-128 bytes of [A-Za-z0-9._:-] without '..'")
}
