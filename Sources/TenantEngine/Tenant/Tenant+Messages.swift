/// A room's summary for ROOMS.
public struct RoomSummary: Sendable, Hashable {
    public var room: String
    public var lastSeq: UInt64
    public var messageCount: Int

    /// Creates a summary.
    public init(room: String, lastSeq: UInt64, messageCount: Int) {
        self.room = room
        self.lastSeq = lastSeq
        self.messageCount = messageCount
    }
}

extension Tenant {
    /// The most messages one HISTORY returns.
    public static let maxHistoryLimit = 1000
    /// The number of messages HISTORY returns without LIMIT.
    public static let defaultHistoryLimit = 100
    /// The most text one HISTORY returns (always at least one message): the client pages on
    /// with AFTER or BEFORE.
    public static let maxHistoryTextBytes = 4 << 20

    /// Accepts a message into the log's batch and hands out its seq; ``commit(_:)`` waits for it.
    ///
    /// Splitting the two lets one connection pipeline many POSTs into one group commit while its
    /// replies still come back in order.
    /// - Parameters:
    ///   - principal: the sender; any role may post.
    ///   - room: a valid room name.
    ///   - text: the message, at most the configured size.
    /// - Returns: the ticket to commit.
    /// - Throws: ``TenantError`` (INVALID, TOOBIG, NOPERM, SUSPENDED, IOERR).
    public func post(_ principal: Principal, room: String, text: String) throws -> PostTicket {
        _ = try self.authorize(principal, minimum: .member)
        guard Names.isValidRoom(room) else {
            throw TenantError.invalid("room name must be 1-128 bytes of [A-Za-z0-9._:-] without '..'")
        }
        let size = text.utf8.count
        guard size <= self.configuration.maxMessageBytes else {
            throw TenantError(
                .tooBig,
                "message of \(size) bytes is over the limit of \(self.configuration.maxMessageBytes)"
            )
        }
        try self.checkWritable()
        let now = self.configuration.clock()
        try self.admitMessage(now: now)
        let seq = self.data.rooms[room]?.nextSeq ?? 1
        let message = Message(seq: seq, timestamp: now, user: principal.displayName, text: text)
        let lsn = try self.append(.message(room: room, message))
        self.data.rooms[room, default: Room()].nextSeq = seq + 1
        self.pending.append((lsn, room, message))
        return PostTicket(seq: seq, lsn: lsn)
    }

    /// Waits until a posted message is durable and visible.
    /// - Returns: the message's seq.
    /// - Throws: IOERR when the log failed; the message is then not acknowledged.
    public func commit(_ ticket: PostTicket) async throws -> UInt64 {
        try await self.waitDurable(ticket.lsn)
        return ticket.seq
    }

    /// Posts and waits: ``post(_:room:text:)`` then ``commit(_:)``.
    public func postAndCommit(_ principal: Principal, room: String, text: String) async throws -> UInt64 {
        let ticket = try self.post(principal, room: room, text: text)
        return try await self.commit(ticket)
    }

    /// A room's messages, oldest first, at most ``maxHistoryTextBytes`` of text: with AFTER the
    /// page keeps its oldest messages, otherwise its newest, so paging on from its edge misses none.
    /// - Parameters:
    ///   - after: the first `limit` with a greater seq.
    ///   - before: the last `limit` with a smaller seq.
    ///   - limit: clamped to ``maxHistoryLimit``.
    /// - Returns: the messages; an unknown room has none.
    public func history(
        _ principal: Principal,
        room: String,
        after: UInt64?,
        before: UInt64?,
        limit: Int
    )
        throws -> [Message]
    {
        _ = try self.authorize(principal, minimum: .member)
        guard Names.isValidRoom(room) else {
            throw TenantError.invalid("room name must be 1-128 bytes of [A-Za-z0-9._:-] without '..'")
        }
        self.applyDurable()
        guard let messages = self.data.rooms[room] else { return [] }
        let page = Array(messages.history(after: after, before: before, limit: min(limit, Self.maxHistoryLimit)))
        return Self.capped(page, keepingOldest: after != nil, maxTextBytes: Self.maxHistoryTextBytes)
    }

    /// The longest run of `page` from one end whose texts fit `maxTextBytes` (one message at least).
    static func capped(_ page: [Message], keepingOldest: Bool, maxTextBytes: Int) -> [Message] {
        var total = 0
        var kept = 0
        while kept < page.count {
            // Counted from the end the page keeps, without building an index list on every HISTORY.
            let index = keepingOldest ? kept : page.count - 1 - kept
            total += page[index].text.utf8.count
            if kept > 0 && total > maxTextBytes { break }
            kept += 1
        }
        if kept == page.count { return page }
        return keepingOldest ? Array(page.prefix(kept)) : Array(page.suffix(kept))
    }

    /// The most rooms one ROOMS returns: the client pages on with AFTER.
    public static let maxRoomsPage = 10_000

    /// The rooms with messages, by name: the first `limit` after `after`.
    /// - Parameters:
    ///   - after: only rooms whose names sort after this one (nil: from the first).
    ///   - limit: clamped to ``maxRoomsPage``.
    public func rooms(
        _ principal: Principal,
        after: String? = nil,
        limit: Int = Tenant.maxRoomsPage
    ) throws
        -> [RoomSummary]
    {
        _ = try self.authorize(principal, minimum: .member)
        self.applyDurable()
        let page = self.data.rooms.compactMap { name, room -> RoomSummary? in
            guard room.lastSeq > 0, after.map({ name > $0 }) ?? true else { return nil }
            return RoomSummary(room: name, lastSeq: room.lastSeq, messageCount: room.messages.count)
        }.sorted { $0.room < $1.room }
        return Array(page.prefix(max(0, min(limit, Self.maxRoomsPage))))
    }
}
