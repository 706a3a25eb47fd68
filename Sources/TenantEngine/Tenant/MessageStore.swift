import DequeModule

/// A tenant's rooms and messages: those visible (their records durable) and those accepted but
/// waiting for the log, which get their seq at once and become visible in lsn order.
struct MessageStore: Sendable {
    private(set) var rooms: [String: Room]
    private(set) var count: Int
    private var pending: Deque<(lsn: UInt64, room: String, message: Message)> = []
    /// Where sealed chunks go when the server is over its memory budget (nil: they stay).
    let cold: ColdStore?

    init(rooms: [String: Room], count: Int, cold: ColdStore?) {
        self.rooms = rooms
        self.count = count
        self.cold = cold
    }

    /// True while accepted messages wait for the log.
    var hasPending: Bool { !self.pending.isEmpty }

    /// The seq the next message of `room` gets.
    func nextSeq(in room: String) -> UInt64 {
        self.rooms[room]?.nextSeq ?? 1
    }

    /// Takes a message whose record is appended at `lsn`; it is visible once that is durable.
    mutating func accept(_ message: Message, room: String, lsn: UInt64) {
        self.rooms[room, default: Room()].nextSeq = message.seq + 1
        self.pending.append((lsn, room, message))
    }

    /// Makes the accepted messages up to `durableLSN` visible, in lsn order.
    /// - Returns: them, for the subscribers.
    /// - Parameter collect: return the messages applied (for subscribers); false returns none,
    ///   and a tenant without subscribers builds no list per write.
    mutating func applyDurable(
        upTo durableLSN: UInt64,
        collect: Bool = true
    ) throws -> [(room: String, message: Message)] {
        guard let first = self.pending.first, first.lsn <= durableLSN else { return [] }
        var applied: [(room: String, message: Message)] = []
        while let next = self.pending.first, next.lsn <= durableLSN {
            self.pending.removeFirst()
            let taken = try self.rooms[next.room, default: Room()].apply(next.message)
            self.cold?.took(taken, room: next.room, rooms: &self.rooms)
            self.count += 1
            if collect { applied.append((next.room, next.message)) }
        }
        return applied
    }

    /// The messages accepted but not yet visible, by room, in seq order (for a checkpoint).
    var pendingByRoom: [String: [Message]] {
        var byRoom: [String: [Message]] = [:]
        for entry in self.pending { byRoom[entry.room, default: []].append(entry.message) }
        return byRoom
    }

    /// Forgets the accepted messages (the log failed: they are never acknowledged).
    mutating func dropPending() {
        self.pending.removeAll()
    }

    /// A room's visible messages, oldest first, at most `maxTextBytes` of text: with AFTER the
    /// page keeps its oldest messages, otherwise its newest, so paging on from its edge misses none.
    /// - Throws: when a cold chunk cannot be read back.
    func history(room: String, after: UInt64?, before: UInt64?, limit: Int, maxTextBytes: Int) throws -> MessagePage {
        guard let messages = self.rooms[room] else { return MessagePage() }
        // The room copies only what fits; the cap here holds the contract whatever the room does.
        let page = try messages.historyPage(after: after, before: before, limit: limit, maxTextBytes: maxTextBytes)
        return Self.capped(page, keepingOldest: after != nil, maxTextBytes: maxTextBytes)
    }

    /// The longest run of `page` from one end whose texts fit `maxTextBytes` (one message at least).
    static func capped(_ page: MessagePage, keepingOldest: Bool, maxTextBytes: Int) -> MessagePage {
        var total = 0
        var kept = 0
        while kept < page.count {
            // Counted from the end the page keeps.
            let index = keepingOldest ? kept : page.count - 1 - kept
            total += page.text(at: index).count
            if kept > 0 && total > maxTextBytes { break }
            kept += 1
        }
        if kept == page.count { return page }
        return page.slice(keepingOldest ? 0..<kept : page.count - kept..<page.count)
    }

    /// The rooms with visible messages, by name: the first `limit` after `after`.
    func summaries(after: String?, limit: Int) -> [RoomSummary] {
        let page = self.rooms.compactMap { name, room -> RoomSummary? in
            guard room.lastSeq > 0, after.map({ name > $0 }) ?? true else { return nil }
            return RoomSummary(room: name, lastSeq: room.lastSeq, messageCount: room.count)
        }.sorted { $0.room < $1.room }
        return Array(page.prefix(max(0, limit)))
    }
}
