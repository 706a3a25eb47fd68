import Synchronization

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
    /// The most text one HISTORY returns (always at least one message): the client pages on
    /// with AFTER or BEFORE.
    public static let maxHistoryTextBytes = EngineLimits.maxHistoryTextBytes

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
        _ = try self.authorize(principal, .post)
        guard Names.isValidRoom(room) else { throw Self.invalidRoom }
        let size = text.utf8.count
        guard size <= self.configuration.maxMessageBytes else {
            throw TenantError(
                .tooLarge,
                "message of \(size) bytes is over the limit of \(self.configuration.maxMessageBytes)"
            )
        }
        try self.checkWritable()
        let now = self.configuration.clock()
        try self.quota.admitMessage(now: now, limits: self.metadata, logger: self.logger)
        let seq = self.messages.nextSeq(in: room)
        let message = Message(seq: seq, timestamp: now, user: principal.displayName, text: text)
        let lsn = try self.append(.message(room: room, message))
        self.messages.accept(message, room: room, lsn: lsn)
        self.counters.messagesPosted.wrappingAdd(1, ordering: .relaxed)
        return PostTicket(seq: seq, lsn: lsn)
    }

    /// Posts a batch in one turn of the actor, each as ``post(_:room:text:)`` would in turn.
    /// - Returns: each one's ticket, or the error it met; a failure does not stop the rest.
    public func post(_ principal: Principal, batch: [(room: String, text: String)]) -> [Result<PostTicket, TenantError>]
    {
        batch.map { item in
            do {
                return .success(try self.post(principal, room: item.room, text: item.text))
            } catch let error as TenantError {
                return .failure(error)
            } catch {
                return .failure(TenantError(.storageFailed, "\(error)"))
            }
        }
    }

    /// Waits until a posted message is durable and visible.
    /// - Returns: the message's seq.
    /// - Throws: IOERR when the log failed; the message is then not acknowledged.
    ///
    /// It enters the tenant's actor only when the message is not visible yet: of the POSTs one
    /// group commit made durable, the first to return makes them all visible and the others
    /// return without queueing on the actor, which a busy tenant's many connections would
    /// otherwise each do once per flush.
    public nonisolated func commit(_ ticket: PostTicket) async throws -> UInt64 {
        do {
            try await self.journal.waitUntilDurable(ticket.lsn)
        } catch {
            throw await self.failedWait(error)
        }
        if self.appliedLSN.load(ordering: .acquiring) < ticket.lsn { await self.applyDurable() }
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
        try self.historyPage(principal, room: room, after: after, before: before, limit: limit).messages
    }

    /// HISTORY's messages as a page (see ``history(_:room:after:before:limit:)``): what the server
    /// encodes its reply from.
    public func historyPage(
        _ principal: Principal,
        room: String,
        after: UInt64?,
        before: UInt64?,
        limit: Int
    )
        throws -> MessagePage
    {
        _ = try self.authorize(principal, .read)
        guard Names.isValidRoom(room) else { throw Self.invalidRoom }
        self.applyDurable()
        do {
            return try self.messages.history(
                room: room,
                after: after,
                before: before,
                limit: min(limit, EngineLimits.maxHistoryLimit),
                maxTextBytes: Self.maxHistoryTextBytes
            )
        } catch {
            throw TenantError(.storageFailed, "older messages of room \(room) could not be read back: \(error)")
        }
    }

    /// The rooms with messages, by name: the first `limit` after `after`.
    /// - Parameters:
    ///   - after: only rooms whose names sort after this one (nil: from the first).
    ///   - limit: clamped to ``maxRoomsPage``.
    public func rooms(
        _ principal: Principal,
        after: String? = nil,
        limit: Int = EngineLimits.maxRoomsPage
    ) throws
        -> [RoomSummary]
    {
        _ = try self.authorize(principal, .read)
        self.applyDurable()
        return self.messages.summaries(after: after, limit: min(limit, EngineLimits.maxRoomsPage))
    }
}
