import Logging
import NIOCore
import RESP
import Synchronization
import TenantEngine

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One client connection: a reader that runs commands in order and a writer that sends their
/// replies in the same order, each POST's reply once its record is durable.
///
/// The split lets a pipelining client have many POSTs in one group commit.
struct Connection {
    /// A reply in the queue: encoded where the command ran, so the queue knows its size.
    enum Slot: Sendable {
        case bytes(ByteBuffer)
        case post(Tenant, PostTicket, RESPVersion)
        case close(ByteBuffer)
        /// Every request the connection took so far (this many) is answered above: the handler may
        /// run the next ones on `lane`.
        case idle(Int, SyncLane?)
        /// Completed when the handler has it: every reply before it has reached the handler.
        case barrier(EventLoopPromise<Void>)
        /// Replies, the last of them HELLO's, after which the client speaks `version`: written
        /// with the marker that tells the handler (``ConnectionOutput/pushVersion(_:)``) in one
        /// write, so that no push comes between.
        case versionChange(ByteBuffer, RESPVersion)

        /// The memory it holds, for the queue's byte bound.
        var weight: Int {
            switch self {
            case .bytes(let buffer), .close(let buffer), .versionChange(let buffer, _): return buffer.capacity
            case .post: return 16
            case .idle, .barrier: return 0
            }
        }

        static func value(_ value: RESPValue, _ version: RESPVersion) -> Slot {
            .bytes(Self.encoded(value, version))
        }

        static func close(_ value: RESPValue, _ version: RESPVersion) -> Slot {
            .close(Self.encoded(value, version))
        }

        private static func encoded(_ value: RESPValue, _ version: RESPVersion) -> ByteBuffer {
            Self.tightened(RESPEncoder.encode(value, version: version))
        }

        /// Replies' bytes in a buffer of about their size: a buffer grown by doubling while a
        /// 4 MiB reply was encoded would hold 8 MiB for as long as the reply waits.
        static func tightened(_ buffer: ByteBuffer) -> ByteBuffer {
            guard buffer.capacity - buffer.readableBytes > 64 << 10 else { return buffer }
            var tight = ByteBuffer()
            tight.reserveCapacity(buffer.readableBytes)
            tight.writeImmutableBuffer(buffer)
            return tight
        }
    }

    let id: Int64
    let channel: NIOAsyncChannel<[RESPRequest], ConnectionOutput>
    let gate: RequestGate
    /// Where the tenants' pushes for this connection go: its handler.
    let pushes: PushSink
    let transport: ConnectionTransport
    let dispatcher: CommandDispatcher
    /// Its socket, when it may move to its tenant's loop (``ConnectionSocket``).
    var socket: ConnectionSocket? = nil
    /// The session it had before it moved here.
    var carried: CarriedSession? = nil

    init(
        id: Int64,
        channel: NIOAsyncChannel<[RESPRequest], ConnectionOutput>,
        gate: RequestGate,
        pushes: PushSink,
        transport: ConnectionTransport,
        dispatcher: CommandDispatcher,
        socket: ConnectionSocket? = nil,
        carried: CarriedSession? = nil
    ) {
        self.id = id
        self.channel = channel
        self.gate = gate
        self.pushes = pushes
        self.transport = transport
        self.dispatcher = dispatcher
        self.socket = socket
        self.carried = carried
    }

    init(_ new: NewConnection, dispatcher: CommandDispatcher) {
        self.init(
            id: new.id,
            channel: new.channel,
            gate: new.gate,
            pushes: new.pushes,
            transport: new.transport,
            dispatcher: dispatcher,
            socket: new.socket,
            carried: new.carried
        )
    }

    /// Runs the connection until it closes or moves.
    /// - Returns: whether it moved to another event loop (its new channel goes on with it).
    func run() async -> Bool {
        // The session, taken as the connection closes, when its handler moves it.
        var moving: (ConnectionSocket.Handover, CarriedSession)?
        defer {
            if let (handover, session) = moving, let socket = self.socket {
                socket.mover.move(handover, session: session)
            }
        }
        do {
            try await self.channel.executeThenClose { inbound, outbound in
                let gate = self.gate
                let queue = ReplyQueue<Slot>(
                    limit: FixedLimits.unauthenticatedReplyWindow,
                    byteLimit: FixedLimits.unauthenticatedReplyWindowBytes,
                    pubSubLimit: self.dispatcher.limits.pubSub,
                    normalLimit: self.dispatcher.limits.normal,
                    onNormalLimit: {
                        [logger = self.dispatcher.logger, id = self.id, memory = self.dispatcher.clientMemory] in
                        memory.countEviction()
                        logger.warning(
                            "client disconnected: over client-output-buffer-limit normal",
                            metadata: ["event": "client_evicted", "connection": "\(id)"]
                        )
                    },
                    memory: self.dispatcher.clientMemory,
                    // A client that does not read its replies holds no share of its tenant.
                    onReaderWait: { gate.park() },
                    onReaderResume: { gate.unpark() }
                )
                let memory = self.dispatcher.clientMemory
                let connectionID = self.id
                let nioChannel = self.channel.channel
                let logger = self.dispatcher.logger
                let pushes = self.pushes
                pushes.account(to: memory)
                memory.register(
                    id: connectionID,
                    holder: .init(
                        bytes: { queue.heldBytes + pushes.heldBytes },
                        close: {
                            logger.warning(
                                "client disconnected: over maxmemory-clients, it held the most unsent replies",
                                metadata: ["event": "client_evicted", "connection": "\(connectionID)"]
                            )
                            nioChannel.close(promise: nil)
                        }
                    )
                )
                defer { memory.unregister(id: connectionID, holding: queue.heldBytes + pushes.stopAccounting()) }
                // The barrier the task waits at, failed if the connection closes first.
                let barrier = Barrier(channel: self.channel.channel)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        defer { queue.writerStopped() }
                        try await Self.write(queue, to: outbound)
                    }
                    defer { queue.finish() }
                    let address = self.channel.channel.remoteAddress?.ipAddress ?? "unknown"
                    let channel = self.channel.channel
                    let logger = self.dispatcher.logger
                    let id = self.id
                    var session = Session(
                        id: self.id,
                        clientAddress: address,
                        transport: self.transport,
                        subscriber: ConnectionSubscriber(queue: queue, sink: self.pushes, version: .resp2) {
                            // Over client-output-buffer-limit-pubsub: Redis closes such a client.
                            logger.warning(
                                "subscriber disconnected: over client-output-buffer-limit-pubsub",
                                metadata: ["connection": "\(id)", "address": "\(address)"]
                            )
                            channel.close(promise: nil)
                        } hangUp: {
                            // The writer sends the last reply first; a client that does not read
                            // it is closed all the same.
                            channel.eventLoop.scheduleTask(in: .milliseconds(500)) { channel.close(promise: nil) }
                        }
                    )
                    let contexts = self.dispatcher.contexts
                    let admission = self.dispatcher.admission
                    var state = ConnectionState(fairShares: admission.isEnabled)
                    defer { contexts.move(session.subscriber, from: state.registeredContext, to: nil) }
                    defer {
                        session.setContext(nil, id: nil)
                        let channels = session.subscriber.subscriptions.values.map { ($0.tenant, $0.room) }
                        let subscriber = session.subscriber
                        if !channels.isEmpty {
                            Task {
                                for (tenant, room) in channels { await tenant.drop(subscriber, rooms: [room]) }
                            }
                        }
                    }
                    var account: TenantAdmission.Account?
                    /// The connection reads no more: what it charged its tenant is given back.
                    func leaveTenant() {
                        gate.setAccount(nil)
                        if let left = account { admission.detach(left) }
                        account = nil
                    }
                    defer { leaveTenant() }
                    defer {
                        // Its handler moves it (its channel closed for that): the session goes
                        // with it, taken before the defers above let go of it.
                        if let socket = self.socket, let handover = socket.takeHandover() {
                            if let session = CarriedSession(session, handover: handover, moves: socket.moves) {
                                moving = (handover, session)
                            } else {
                                close(handover.descriptor)
                                socket.mover.failed(socket.id)
                            }
                        }
                    }
                    var replies = ReplyBatch()
                    /// Queues a command's outcome. - Returns: false when the connection is done.
                    func queueOutcome(_ outcome: CommandOutcome) async -> Bool {
                        var outcome = outcome
                        if session.closeAfterReply, case .reply(let value) = outcome { outcome = .replyAndClose(value) }
                        var closing = false
                        if case .replyAndClose = outcome { closing = true }
                        let actions = state.commandRan(
                            ConnectionState.Session(
                                authenticated: session.principal != nil,
                                tenantID: session.tenantID,
                                subscribedMode: session.isInSubscribedMode,
                                closing: closing
                            )
                        )
                        if actions.authenticate {
                            self.gate.authenticated()
                            queue.widen(limit: FixedLimits.replyWindow, byteLimit: FixedLimits.replyWindowBytes)
                        }
                        if let move = actions.moveContext {
                            contexts.move(session.subscriber, from: move.from, to: move.to)
                        }
                        if let charge = actions.charge {
                            // Its requests are now charged to its new tenant.
                            if let account { admission.detach(account) }
                            account = charge.map { admission.attach($0) }
                            gate.setAccount(account)
                        }
                        switch outcome {
                        case .reply(let value):
                            let bytes = replies.append(value, version: session.version)
                            ServerStats.shared.sent(bytes)
                            (session.pathTarget.current ?? session.tenant)?.counters.replied(bytes: bytes)
                            return replies.isFull ? await replies.push(to: queue) : true
                        case .post(let tenant, let ticket):
                            let slot = Slot.post(tenant, ticket, session.version)
                            guard await replies.push(to: queue) else { return false }
                            return await queue.push(slot, weight: slot.weight)
                        case .replyAndClose(let value):
                            let slot = Slot.close(value, session.version)
                            if case .close(let bytes) = slot {
                                ServerStats.shared.sent(bytes.readableBytes)
                                (session.pathTarget.current ?? session.tenant)?.counters.replied(
                                    bytes: bytes.readableBytes
                                )
                            }
                            if await replies.push(to: queue) { _ = await queue.push(slot, weight: slot.weight) }
                            return false
                        case .delivered:
                            return true
                        }
                    }
                    // The requests taken from the handler so far, for its idle marker.
                    var taken = 0
                    let lanes = self.dispatcher.registry.configuration.placement != nil
                    var open = true
                    if let carried = self.carried {
                        // Moved here: as it was after the command that moved it (authenticated,
                        // registered under its tenant), and the lane is the handler's at once.
                        carried.restore(into: &session)
                        open = await queueOutcome(.delivered)
                        if open && lanes {
                            let slot = Slot.idle(0, self.lane(for: session, state: state))
                            open = await queue.push(slot, weight: 0, replies: 0)
                        }
                    }
                    reading: for try await batch in inbound {
                        guard open else { break reading }
                        guard session.subscriber.beginRequests() else { break reading }
                        var index = batch.startIndex
                        // A turn on the event loop runs a bounded number of requests: a batch of
                        // thousands from one client does not hold back the loop's other connections.
                        var turnEnds = index + FixedLimits.requestsPerTurn
                        // The end of a run of POSTs that was declined: its requests go one by one,
                        // and the run is not looked for again at each of them.
                        var declinedUntil = index
                        while index < batch.endIndex {
                            if index >= turnEnds {
                                // The replies so far go to the writer first.
                                guard await replies.push(to: queue) else { break reading }
                                await Task.yield()
                                turnEnds = index + FixedLimits.requestsPerTurn
                            }
                            // A run of POSTs to rooms of the connection's tenant: one call to the
                            // tenant for all of them.
                            var checked: Arguments?
                            if index >= declinedUntil {
                                let run = Self.postRun(batch, from: index)
                                if run.count == 1 { checked = run[0] }
                                if run.count > 1 {
                                    if let outcomes = await self.dispatcher.handlePosts(run, session: &session) {
                                        for (offset, outcome) in outcomes.enumerated() {
                                            let request = batch[index + offset]
                                            ServerStats.shared.received(request.wireBytes)
                                            session.tenant?.counters.requested(bytes: request.wireBytes)
                                            defer { self.gate.finished(request.cost) }
                                            guard await queueOutcome(outcome) else { break reading }
                                        }
                                        index += run.count
                                        continue
                                    }
                                    declinedUntil = index + run.count
                                }
                            }
                            let request = batch[index]
                            index += 1
                            defer {
                                // Counted to the tenant the command ran in: a path-form room's, or
                                // the connection's once it ran (AUTH's own tenant). A framing error
                                // ran no command.
                                ServerStats.shared.received(request.wireBytes)
                                let ran = session.pathTarget.take() ?? session.tenant
                                if case .command = request { ran?.counters.requested(bytes: request.wireBytes) }
                                self.gate.finished(request.cost)
                            }
                            switch request {
                            case .protocolError(let message):
                                _ = await queueOutcome(.replyAndClose(.reply(for: ServerError(.proto, message))))
                                break reading
                            case .tooBig(let message):
                                guard await queueOutcome(.reply(.reply(for: ServerError(.tooBig, message)))) else {
                                    break reading
                                }
                            case .command(let words):
                                let delivers = session.principal != nil && CommandTable.delivers(words[0])
                                if session.isInSubscribedMode || delivers {
                                    // Its replies go straight to the queue, after those before it.
                                    guard await replies.push(to: queue) else { break reading }
                                }
                                if delivers {
                                    // Its tenants deliver its replies to the handler: those before
                                    // it must be there first.
                                    guard await barrier.reach(through: queue) else { break reading }
                                }
                                let versionBefore = session.version
                                let outcome: CommandOutcome
                                do {
                                    if let echoed = Self.echo(words, session: session) {
                                        ServerMetrics.command(CommandTable.echo)
                                        outcome = .reply(echoed)
                                    } else {
                                        let arguments = try checked ?? Arguments(words)
                                        outcome = await self.dispatcher.handle(arguments, session: &session)
                                    }
                                } catch {
                                    outcome = .reply(.reply(for: error))
                                }
                                guard await queueOutcome(outcome) else { break reading }
                                if session.version != versionBefore {
                                    // HELLO's reply, then the handler encodes pushes in the new
                                    // protocol: one slot, one write.
                                    let (bytes, count) = replies.take()
                                    let slot = Slot.versionChange(bytes, session.version)
                                    guard await queue.push(slot, weight: slot.weight, replies: count) else {
                                        break reading
                                    }
                                }
                            }
                        }
                        guard await replies.push(to: queue) else { break reading }
                        if let message = session.subscriber.endRequests() {
                            // Its tenant left this server while these ran: told after their replies.
                            _ = await queueOutcome(.replyAndClose(.error(message)))
                            break reading
                        }
                        taken += batch.count
                        if lanes {
                            // After the replies: the handler may run what follows on the lane.
                            let slot = Slot.idle(taken, self.lane(for: session, state: state))
                            guard await queue.push(slot, weight: 0, replies: 0) else { break reading }
                        }
                    }
                    // Before the writer drains (a client that does not read may take its time).
                    leaveTenant()
                    queue.finish()
                    try await group.waitForAll()
                }
            }
        } catch {
            self.dispatcher.logger.debug("connection \(self.id) ended: \(error)")
        }
        return moving != nil
    }

    /// The lane the session allows now: authenticated, not subscribed, no fair shares, not
    /// closing, and a tenant context (if any: the operator may have none and name tenants in
    /// path-form rooms) placed on an event loop (this connection's, or another, reached in one hop
    /// per batch).
    private func lane(for session: Session, state: ConnectionState) -> SyncLane? {
        guard state.allowsLane, let principal = session.principal else { return nil }
        if let tenant = session.tenant {
            guard !tenant.isClosed, tenant.placement is any EventLoop else { return nil }
        }
        return SyncLane(
            connectionID: self.id,
            tenant: session.tenant,
            tenantID: session.tenantID,
            principal: principal,
            version: session.version,
            pathForm: self.pathForm,
            subscriber: session.subscriber
        )
    }

    /// What the lane does with path-form rooms, as ``CommandDispatcher/target(room:principal:session:)``
    /// does.
    private var pathForm: SyncLane.PathForm {
        let registry = self.dispatcher.registry
        guard registry.configuration.idSources.contains(.path) else { return .plain }
        guard registry.impliedTenantID == nil else { return .decline }
        return .resolve(registry.openTenants)
    }

    /// The POSTs of two arguments starting at `start` in `batch`, as arguments; empty when the
    /// request there is not one.
    private static func postRun(_ batch: [RESPRequest], from start: Int) -> [Arguments] {
        var run: [Arguments] = []
        var index = start
        while index < batch.endIndex, case .command(let words) = batch[index], words.count == 3,
            CommandTable.isPost(words[0]),
            let arguments = try? Arguments(words)
        {
            run.append(arguments)
            index += 1
        }
        return run
    }

    /// ECHO returns its argument's bytes as they are, UTF-8 or not, as Redis does (`redis-cli --pipe`
    /// ends its input with an ECHO of random bytes and waits for them).
    private static func echo(_ words: [ByteBuffer], session: Session) -> RESPValue? {
        guard words.count == 2, !session.isInSubscribedMode, CommandTable.isEcho(words[0]) else { return nil }
        return .bulkBytes(Array(words[1].readableBytesView))
    }

    /// Writes the replies in order, every batch the reader queued in one write; a POST's once it is durable.
    private static func write(
        _ queue: ReplyQueue<Slot>,
        to outbound: NIOAsyncChannelOutboundWriter<ConnectionOutput>
    )
        async throws
    {
        while let slots = await queue.popAll() {
            var buffer = ByteBuffer()
            var index = slots.startIndex
            while index < slots.endIndex {
                if buffer.readableBytes >= FixedLimits.writeChunk {
                    // Large replies go out as they are encoded: a batch of big HISTORY replies never
                    // sits in memory whole, and a client that does not read stops the writer here.
                    try await outbound.write(.bytes(buffer))
                    buffer = ByteBuffer()
                }
                switch slots[index] {
                case .bytes(let bytes) where bytes.readableBytes >= FixedLimits.writeChunk:
                    // A large reply goes out as it is, not copied into the batch.
                    if buffer.readableBytes > 0 { try await outbound.write(.bytes(buffer)) }
                    try await outbound.write(.bytes(bytes))
                    buffer = ByteBuffer()
                    index += 1
                case .bytes(let bytes):
                    buffer.writeImmutableBuffer(bytes)
                    index += 1
                case .post(let tenant, _, _):
                    let end = Self.endOfPostRun(slots, from: index, tenant: tenant)
                    await Self.commitPosts(slots[index..<end], tenant: tenant, into: &buffer)
                    index = end
                case .close(let bytes):
                    buffer.writeImmutableBuffer(bytes)
                    try await Self.write(&buffer, then: .closing, to: outbound)
                    return
                case .versionChange(let bytes, let version):
                    buffer.writeImmutableBuffer(bytes)
                    try await Self.write(&buffer, then: .pushVersion(version), to: outbound)
                    index += 1
                case .barrier(let promise):
                    do {
                        try await Self.write(&buffer, then: .barrier(promise), to: outbound)
                    } catch {
                        promise.fail(error)
                        throw error
                    }
                    index += 1
                case .idle(let taken, let lane):
                    try await Self.write(&buffer, then: .idle(handed: taken, lane: lane), to: outbound)
                    index += 1
                }
            }
            if buffer.readableBytes > 0 { try await outbound.write(.bytes(buffer)) }
        }
    }

    /// Writes the replies in `buffer`, then `marker`, in one write (nothing comes between them at
    /// the handler), and empties `buffer`.
    private static func write(
        _ buffer: inout ByteBuffer,
        then marker: ConnectionOutput,
        to outbound: NIOAsyncChannelOutboundWriter<ConnectionOutput>
    ) async throws {
        if buffer.readableBytes > 0 {
            try await outbound.write(contentsOf: [.bytes(buffer), marker])
        } else {
            try await outbound.write(marker)
        }
        buffer = ByteBuffer()
    }

    /// The end of the run of POSTs to `tenant` starting at `start`.
    private static func endOfPostRun(_ slots: [Slot], from start: Int, tenant: Tenant) -> Int {
        var end = start + 1
        while end < slots.endIndex, case .post(let next, _, _) = slots[end], next === tenant { end += 1 }
        return end
    }

    /// Replies to a run of POSTs to one tenant. Their records are in one log in lsn order, so the
    /// last one durable means all of them are: one wait for the whole run. If the log failed, each
    /// is answered on its own (those durable before the failure still get their seq).
    private static func commitPosts(_ run: ArraySlice<Slot>, tenant: Tenant, into buffer: inout ByteBuffer) async {
        guard case .post(_, let last, _) = run.last else { return }
        let start = buffer.writerIndex
        defer {
            ServerStats.shared.sent(buffer.writerIndex - start)
            tenant.counters.replied(bytes: buffer.writerIndex - start)
        }
        let allDurable = (try? await tenant.commit(last)) != nil
        for slot in run {
            guard case .post(_, let ticket, let version) = slot else { continue }
            let value: RESPValue
            if allDurable {
                value = .integer(Int64(ticket.seq))
            } else {
                do {
                    value = .integer(Int64(try await tenant.commit(ticket)))
                } catch {
                    value = .reply(for: error)
                }
            }
            RESPEncoder.encode(value, version: version, into: &buffer)
        }
    }
}

/// The replies of one batch of requests, encoded into one buffer and queued as one slot: one
/// wake-up of the writer and one allocation per batch instead of one per reply.
struct ReplyBatch {

    private var buffer = ByteBuffer()
    private var count = 0

    /// Whether it should be queued now rather than at the end of the batch.
    var isFull: Bool { self.buffer.readableBytes >= FixedLimits.replyBatchMergeBytes }

    /// Adds a reply, encoded as `version` says.
    /// - Returns: its size in bytes.
    @discardableResult
    mutating func append(_ value: RESPValue, version: RESPVersion) -> Int {
        let start = self.buffer.writerIndex
        RESPEncoder.encode(value, version: version, into: &self.buffer)
        self.count += 1
        return self.buffer.writerIndex - start
    }

    /// What it holds, in a buffer of about its size, and how many replies; it is empty after.
    mutating func take() -> (ByteBuffer, Int) {
        let taken = (Connection.Slot.tightened(self.buffer), self.count)
        self.buffer = ByteBuffer()
        self.count = 0
        return taken
    }

    /// Queues what it holds, if anything, as one slot in a buffer of about its size.
    /// - Returns: false once the writer is gone.
    mutating func push(to queue: ReplyQueue<Connection.Slot>) async -> Bool {
        guard self.count > 0 else { return true }
        let (bytes, replies) = self.take()
        return await queue.push(.bytes(bytes), weight: bytes.capacity, replies: replies)
    }
}

/// Where a connection's task waits until every reply it queued has reached the handler (before a
/// command whose tenants deliver its replies there). One per connection: the task waits at one
/// barrier at a time, and the connection's close fails the one it waits at.
final class Barrier: Sendable {
    private let channel: any Channel
    private let waiting = Mutex<(closed: Bool, promise: EventLoopPromise<Void>?)>((false, nil))

    init(channel: any Channel) {
        self.channel = channel
        // Held until the channel closes (its close releases the callback).
        channel.closeFuture.whenComplete { _ in
            let promise = self.waiting.withLock { state -> EventLoopPromise<Void>? in
                state.closed = true
                defer { state.promise = nil }
                return state.promise
            }
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    /// Sends a barrier through `queue` and waits for the handler to have it.
    /// - Returns: false when the connection closed first.
    func reach(through queue: ReplyQueue<Connection.Slot>) async -> Bool {
        let promise = self.channel.eventLoop.makePromise(of: Void.self)
        let closed = self.waiting.withLock { state in
            if !state.closed { state.promise = promise }
            return state.closed
        }
        defer { self.waiting.withLock { $0.promise = nil } }
        guard !closed, await queue.push(.barrier(promise), weight: 0, replies: 0) else {
            promise.fail(ChannelError.ioOnClosedChannel)
            return false
        }
        return (try? await promise.futureResult.get()) != nil
    }
}
