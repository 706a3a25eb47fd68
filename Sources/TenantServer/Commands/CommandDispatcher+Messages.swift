import NIOCore
import RESP
import TenantEngine
import TenantMetrics

extension CommandDispatcher {
    /// The tenant and room a room argument names: `/tenant/<id>/<room>` names its tenant, honoured
    /// only for a credential valid there; a plain room is in the connection's tenant context.
    func target(room argument: String, principal: Principal, session: Session) async throws -> (Tenant, String) {
        let prefix = "/tenant/"
        guard argument.hasPrefix(prefix), self.registry.configuration.idSources.contains(.path) else {
            return (try session.contextTenant(), argument)
        }
        let rest = argument.dropFirst(prefix.count)
        guard let slash = rest.firstIndex(of: "/") else {
            throw TenantError.invalid("path form is /tenant/<tenant-id>/<room>")
        }
        let id = String(rest[..<slash])
        let room = String(rest[rest.index(after: slash)...])
        guard Names.isValidTenantID(id) else { throw TenantError.invalid("tenant id must be 1-50 bytes of [a-z0-9-]") }
        try await self.registry.checkServed(id: id)
        switch principal {
        case .operator:
            let tenant = try await self.registry.tenantForOperator(id: id)
            session.pathTarget.set(tenant)
            return (tenant, room)
        case .user(let tenantID, _, _):
            guard tenantID == id, let tenant = session.tenant else {
                throw TenantError.noPermission("credential is not valid for tenant '\(id)'")
            }
            return (tenant, room)
        }
    }

    /// A run of POSTs (each of two arguments, valid UTF-8) pipelined on one connection, as one
    /// call to the tenant when every one goes to a room of the connection's tenant context:
    /// each gets the outcome it would have had on its own, in order.
    /// - Returns: nil when the run must go command by command (no context, a path-form room,
    ///   subscribed mode, no AUTH): those cases have their own replies.
    func handlePosts(_ run: [Arguments], session: inout Session) async -> [CommandOutcome]? {
        guard let principal = session.principal, !session.isInSubscribedMode,
            run.allSatisfy({ !$0[0].hasPrefix("/tenant/") })
        else { return nil }
        // A tenant handed over meanwhile: each POST is answered on its own (MIGRATED).
        guard (try? await session.refreshContext(from: self.registry)) != nil else { return nil }
        guard let tenant = session.tenant else { return nil }
        let spec = CommandTable.post
        for _ in run { ServerMetrics.command(spec) }
        let start = LatencyHistogram.now()
        if let pending = session.lastPost, pending.tenant !== tenant { await Self.settle(&session) }
        let results = await tenant.post(principal, batch: run.map { ($0[0], $0[1]) })
        // Each POST of the run is recorded with its share of the run's time.
        let share = (LatencyHistogram.now() &- start) / UInt64(run.count)
        for _ in run { spec.latency.record(nanoseconds: share) }
        var outcomes: [CommandOutcome] = []
        outcomes.reserveCapacity(results.count)
        for result in results {
            switch result {
            case .success(let ticket):
                session.lastPost = (tenant, ticket)
                outcomes.append(.post(tenant, ticket))
            case .failure(let error):
                outcomes.append(.reply(.reply(for: error)))
            }
        }
        return outcomes
    }

    /// POST: accepted into the log's batch at once; its reply waits for durability on the
    /// connection's writer. A POST after a POST to the same tenant does not wait for it (their
    /// records are in lsn order in one log); one to another tenant does, so that a failure of the
    /// first is seen before anything that follows it.
    func post(_ arguments: Arguments, principal: Principal, session: inout Session) async throws -> CommandOutcome {
        let (tenant, room) = try await self.target(room: arguments[0], principal: principal, session: session)
        if let pending = session.lastPost, pending.tenant !== tenant { await Self.settle(&session) }
        let ticket = try await tenant.post(principal, room: room, text: arguments[1])
        session.lastPost = (tenant, ticket)
        return .post(tenant, ticket)
    }

    func history(_ arguments: Arguments, principal: Principal, session: Session) async throws -> RESPValue {
        let options = try Self.historyOptions(arguments)
        let (tenant, room) = try await self.target(room: arguments[0], principal: principal, session: session)
        let page = try await tenant.historyPage(
            principal,
            room: room,
            after: options.after,
            before: options.before,
            limit: options.limit
        )
        return .encoded(Self.encodeHistory(page))
    }

    /// HISTORY's options after its room: `AFTER seq | BEFORE seq`, `LIMIT n`.
    static func historyOptions(_ arguments: Arguments) throws -> (after: UInt64?, before: UInt64?, limit: Int) {
        var after: UInt64?
        var before: UInt64?
        var limit: Int?
        var index = 1
        while index < arguments.count {
            guard index + 1 < arguments.count else { throw CommandError.syntax }
            switch arguments.keyword(index) {
            case "AFTER" where after == nil && before == nil:
                after = try arguments.unsigned(index + 1)
            case "BEFORE" where after == nil && before == nil:
                before = try arguments.unsigned(index + 1)
            case "LIMIT" where limit == nil:
                limit = Int(clamping: try arguments.unsigned(index + 1))
            default:
                throw CommandError.syntax
            }
            index += 2
        }
        return (after, before, limit ?? EngineLimits.defaultHistoryLimit)
    }

    /// A HISTORY reply, encoded straight from the page: an array of `[seq, timestamp, user, text]`
    /// (the same bytes under RESP2 and RESP3), into one buffer sized for it in one pass over raw
    /// memory: no value per message, no bounds check per byte (HISTORY LIMIT 50 spent half its
    /// time in per-field buffer writes).
    static func encodeHistory(_ page: MessagePage) -> ByteBuffer {
        let users = page.users.reduce(0) { $0 + $1.utf8.count }
        // Per message: `*4`, two integers and two bulk headers of at most 20 digits, five CRLFs.
        let bound = 32 + page.texts.count + users + 120 * page.count
        var buffer = ByteBuffer()
        buffer.reserveCapacity(bound)
        page.texts.withUnsafeBytes { texts in
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { raw in
                var writer = RawWriter(raw)
                writer.put(UInt8(ascii: "*"))
                writer.decimal(UInt64(page.count))
                writer.crlf()
                var start = 0
                for index in 0..<page.count {
                    writer.put(UInt8(ascii: "*"))
                    writer.put(UInt8(ascii: "4"))
                    writer.crlf()
                    writer.put(UInt8(ascii: ":"))
                    writer.decimal(page.seq(at: index))
                    writer.crlf()
                    writer.put(UInt8(ascii: ":"))
                    let timestamp = page.timestamps[index]
                    if timestamp < 0 { writer.put(UInt8(ascii: "-")) }
                    writer.decimal(timestamp.magnitude)
                    writer.crlf()
                    var user = page.users[index]
                    user.withUTF8 { writer.bulk(UnsafeRawBufferPointer($0)) }
                    let end = page.ends[index]
                    writer.bulk(UnsafeRawBufferPointer(rebasing: texts[start..<end]))
                    start = end
                }
                return writer.offset
            }
        }
        return buffer
    }

    /// Writes RESP pieces into raw memory the caller sized.
    private struct RawWriter {
        let raw: UnsafeMutableRawBufferPointer
        var offset = 0

        init(_ raw: UnsafeMutableRawBufferPointer) {
            self.raw = raw
        }

        mutating func put(_ byte: UInt8) {
            self.raw[self.offset] = byte
            self.offset += 1
        }

        mutating func crlf() {
            self.put(UInt8(ascii: "\r"))
            self.put(UInt8(ascii: "\n"))
        }

        mutating func decimal(_ number: UInt64) {
            var digits = 1
            var rest = number / 10
            while rest > 0 {
                digits += 1
                rest /= 10
            }
            var value = number
            for place in stride(from: self.offset + digits - 1, through: self.offset, by: -1) {
                self.raw[place] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            }
            self.offset += digits
        }

        mutating func bulk(_ bytes: UnsafeRawBufferPointer) {
            self.put(UInt8(ascii: "$"))
            self.decimal(UInt64(bytes.count))
            self.crlf()
            if let base = bytes.baseAddress, bytes.count > 0 {
                (self.raw.baseAddress! + self.offset).copyMemory(from: base, byteCount: bytes.count)
            }
            self.offset += bytes.count
            self.crlf()
        }
    }

    /// `ROOMS [AFTER <room>] [LIMIT <n>]`: at most 10,000 rooms a reply, paged by name.
    func rooms(_ arguments: Arguments, principal: Principal, session: Session) async throws -> RESPValue {
        let (after, limit) = try arguments.page(from: 0)
        let tenant = try session.contextTenant()
        return Self.encodeRooms(
            try await tenant.rooms(principal, after: after, limit: limit ?? EngineLimits.maxRoomsPage)
        )
    }

    /// ROOMS' reply: `[room, last seq, count]` per room.
    static func encodeRooms(_ rooms: [RoomSummary]) -> RESPValue {
        .array(
            rooms.map { room in
                .array([.bulkString(room.room), .integer(Int64(room.lastSeq)), .integer(Int64(room.messageCount))])
            }
        )
    }

    func usage(principal: Principal, session: Session) async throws -> RESPValue {
        let tenant = try session.contextTenant()
        let usage = try await tenant.usage(principal)
        return .map([
            ("plan", .bulkString(usage.plan.rawValue)),
            ("users", .integer(usage.users)),
            ("max_users", .integer(usage.maxUsers)),
            ("storage_bytes", .integer(usage.storageBytes)),
            ("max_storage_bytes", .integer(usage.maxStorageBytes)),
            ("messages_today", .integer(usage.messagesToday)),
            ("max_messages_per_day", .integer(usage.maxMessagesPerDay)),
        ])
    }

    /// SUBSCRIBE: each channel's reply is delivered by its tenant, so it precedes every push.
    /// A connection holds at most `max-subscriptions` rooms; past it nothing is subscribed.
    func subscribe(
        _ arguments: Arguments,
        principal: Principal,
        session: inout Session
    ) async throws
        -> CommandOutcome
    {
        // Every channel is checked before any is subscribed: one refused channel subscribes none.
        var targets: [(channel: String, tenant: Tenant, room: String)] = []
        let held = session.subscriber.subscriptions
        var added: Set<String> = []
        for channel in arguments.words {
            let (tenant, room) = try await self.target(room: channel, principal: principal, session: session)
            try self.checkSubscription(tenant, room: room, held: held, added: &added)
            targets.append((channel, tenant, room))
        }
        for target in targets {
            let subscriber = session.subscriber
            try await subscriber.recording(
                .init(tenant: target.tenant, room: target.room, channel: target.channel),
                key: target.tenant.subscriptionKey(room: target.room)
            ) {
                try await target.tenant.subscribe(
                    principal,
                    room: target.room,
                    channel: target.channel,
                    subscriber: subscriber
                )
            }
        }
        return .delivered
    }

    /// Checks one of SUBSCRIBE's channels before any is subscribed: a valid room, and no more
    /// than `max-subscriptions` for the connection with those `held` and `added` before it.
    func checkSubscription(
        _ tenant: Tenant,
        room: String,
        held: [String: ConnectionSubscriber.Subscription],
        added: inout Set<String>
    ) throws {
        guard Names.isValidRoom(room) else { throw Tenant.invalidRoom }
        let key = tenant.subscriptionKey(room: room)
        if held[key] == nil { added.insert(key) }
        guard held.count + added.count <= self.limits.maxSubscriptions else {
            throw CommandError(
                "max-subscriptions reached: a connection subscribes to at most \(self.limits.maxSubscriptions) rooms"
            )
        }
    }

    /// UNSUBSCRIBE: a channel in any name form ends the one subscription of its tenant and room.
    func unsubscribe(
        _ arguments: Arguments,
        principal: Principal,
        session: inout Session
    ) async throws
        -> CommandOutcome
    {
        let channels =
            arguments.count == 0 ? session.subscriber.subscriptions.values.map(\.channel).sorted() : arguments.words
        if channels.isEmpty {
            return .reply(.push([.bulkString("unsubscribe"), .null, .integer(0)]))
        }
        for channel in channels {
            let resolved = try? await self.target(room: channel, principal: principal, session: session)
            let key = resolved.map { $0.0.subscriptionKey(room: $0.1) }
            if let key, let subscription = session.subscriber.forget(key: key) {
                await subscription.tenant.unsubscribe(
                    room: subscription.room,
                    channel: channel,
                    subscriber: session.subscriber
                )
            } else {
                _ = session.subscriber.deliver(.unsubscribed(channel: channel, key: nil))
            }
        }
        return .delivered
    }
}
