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

/// The reading side of one connection's task: its session, the state the session's commands
/// move it through, and the replies of the batch being run. Each batch from the handler runs
/// in order, a bounded number of requests per turn; a run of POSTs goes to the tenant in one call.
struct ConnectionReader {
    let connection: Connection
    let queue: ReplyQueue<Connection.Slot>
    /// Where the task waits until every reply it queued has reached the handler.
    let barrier: Barrier
    /// Whether the handler runs hot commands on a lane (the engine places tenants on loops).
    let lanes: Bool
    var session: Session
    var state: ConnectionState
    var replies = ReplyBatch()
    /// What the connection charges its tenant's share.
    var account: TenantAdmission.Account?
    /// The requests taken from the handler so far, for its idle marker.
    var taken = 0

    init(connection: Connection, queue: ReplyQueue<Connection.Slot>, barrier: Barrier) {
        self.connection = connection
        self.queue = queue
        self.barrier = barrier
        self.lanes = connection.dispatcher.registry.configuration.placement != nil
        self.session = Self.session(of: connection, queue: queue)
        self.state = ConnectionState(fairShares: connection.dispatcher.admission.isEnabled)
    }

    /// A new session: anonymous, RESP2, a subscriber closed when over its output limit.
    private static func session(of connection: Connection, queue: ReplyQueue<Connection.Slot>) -> Session {
        let channel = connection.channel.channel
        let address = channel.remoteAddress?.ipAddress ?? "unknown"
        let logger = connection.dispatcher.logger
        let id = connection.id
        return Session(
            id: id,
            clientAddress: address,
            transport: connection.transport,
            subscriber: ConnectionSubscriber(queue: queue, sink: connection.pushes, version: .resp2) {
                // Over client-output-buffer-limit-pubsub: Redis closes such a client.
                logger.warning(
                    "subscriber disconnected: over client-output-buffer-limit-pubsub",
                    metadata: ["connection": "\(id)", "address": "\(address)"]
                )
                channel.close(promise: nil)
            } hangUp: {
                // The writer sends the last reply first; a client that does not read it is
                // closed all the same.
                channel.eventLoop.scheduleTask(in: .milliseconds(500)) { channel.close(promise: nil) }
            }
        )
    }

    /// Moved here: as it was after the command that moved it (authenticated, registered under
    /// its tenant), and the lane is the handler's at once.
    /// - Returns: false when the connection is done.
    mutating func restoreCarried() async -> Bool {
        guard let carried = self.connection.carried else { return true }
        carried.restore(into: &self.session)
        guard await self.queueOutcome(.delivered) else { return false }
        guard self.lanes else { return true }
        let slot = Connection.Slot.idle(0, self.connection.lane(for: self.session, state: self.state))
        return await self.queue.push(slot, weight: 0, replies: 0)
    }

    /// The connection reads no more: what it charged its tenant is given back.
    mutating func leaveTenant() {
        self.connection.gate.setAccount(nil)
        if let left = self.account { self.connection.dispatcher.admission.detach(left) }
        self.account = nil
    }

    /// The connection closes: the session taken first when its handler moves it (its channel
    /// closed for that), then its tenant's share, its context and its subscriptions let go.
    /// - Returns: the session to carry, when it moves.
    mutating func end() -> (ConnectionSocket.Handover, CarriedSession)? {
        var moving: (ConnectionSocket.Handover, CarriedSession)?
        if let socket = self.connection.socket, let handover = socket.takeHandover() {
            if let session = CarriedSession(self.session, handover: handover, moves: socket.moves) {
                moving = (handover, session)
            } else {
                close(handover.descriptor)
                socket.mover.failed(socket.id)
            }
        }
        self.leaveTenant()
        self.session.setContext(nil, id: nil)
        let channels = self.session.subscriber.subscriptions.values.map { ($0.tenant, $0.room) }
        let subscriber = self.session.subscriber
        if !channels.isEmpty {
            Task {
                for (tenant, room) in channels { await tenant.drop(subscriber, rooms: [room]) }
            }
        }
        self.connection.dispatcher.contexts.move(subscriber, from: self.state.registeredContext, to: nil)
        return moving
    }

    /// Runs one batch of requests from the handler, in order.
    /// - Returns: false when the connection is done.
    mutating func run(_ batch: [RESPRequest]) async -> Bool {
        guard self.session.subscriber.beginRequests() else { return false }
        var index = batch.startIndex
        // A turn on the event loop runs a bounded number of requests: a batch of thousands from
        // one client does not hold back the loop's other connections.
        var turnEnds = index + FixedLimits.requestsPerTurn
        // The end of a run of POSTs that was declined: its requests go one by one, and the run
        // is not looked for again at each of them.
        var declinedUntil = index
        while index < batch.endIndex {
            if index >= turnEnds {
                // The replies so far go to the writer first.
                guard await self.replies.push(to: self.queue) else { return false }
                await Task.yield()
                turnEnds = index + FixedLimits.requestsPerTurn
            }
            // A run of POSTs to rooms of the connection's tenant: one call to the tenant for all.
            var checked: Arguments?
            if index >= declinedUntil {
                let run = Connection.postRun(batch, from: index)
                if run.count == 1 { checked = run[0] }
                if run.count > 1 {
                    switch await self.runPosts(run, of: batch, from: index) {
                    case nil:
                        declinedUntil = index + run.count
                    case false?:
                        return false
                    case true?:
                        index += run.count
                        continue
                    }
                }
            }
            let request = batch[index]
            index += 1
            guard await self.runRequest(request, checked: checked) else { return false }
        }
        return await self.endBatch(count: batch.count)
    }

    /// A run of POSTs, in one call to their tenant.
    /// - Returns: nil when the tenant declined the run (its requests go one by one); false when
    ///   the connection is done.
    private mutating func runPosts(_ run: [Arguments], of batch: [RESPRequest], from start: Int) async -> Bool? {
        guard let outcomes = await self.connection.dispatcher.handlePosts(run, session: &self.session) else {
            return nil
        }
        for (offset, outcome) in outcomes.enumerated() {
            let request = batch[start + offset]
            ServerStats.shared.received(request.wireBytes)
            self.session.tenant?.counters.requested(bytes: request.wireBytes)
            defer { self.connection.gate.finished(request.cost) }
            guard await self.queueOutcome(outcome) else { return false }
        }
        return true
    }

    /// One request: a framing error closes the connection after its reply.
    private mutating func runRequest(_ request: RESPRequest, checked: Arguments?) async -> Bool {
        defer {
            // Counted to the tenant the command ran in: a path-form room's, or the connection's
            // once it ran (AUTH's own tenant). A framing error ran no command.
            ServerStats.shared.received(request.wireBytes)
            let ran = self.session.pathTarget.take() ?? self.session.tenant
            if case .command = request { ran?.counters.requested(bytes: request.wireBytes) }
            self.connection.gate.finished(request.cost)
        }
        switch request {
        case .protocolError(let message):
            _ = await self.queueOutcome(.replyAndClose(.reply(for: ServerError(.proto, message))))
            return false
        case .tooBig(let message):
            return await self.queueOutcome(.reply(.reply(for: ServerError(.tooBig, message))))
        case .command(let words):
            return await self.runCommand(words, checked: checked)
        }
    }

    private mutating func runCommand(_ words: [ByteBuffer], checked: Arguments?) async -> Bool {
        let delivers = self.session.principal != nil && CommandTable.delivers(words[0])
        if self.session.isInSubscribedMode || delivers {
            // Its replies go straight to the queue, after those before it.
            guard await self.replies.push(to: self.queue) else { return false }
        }
        if delivers {
            // Its tenants deliver its replies to the handler: those before it must be there first.
            guard await self.barrier.reach(through: self.queue) else { return false }
        }
        let versionBefore = self.session.version
        let outcome: CommandOutcome
        do {
            if let echoed = Connection.echo(words, session: self.session) {
                ServerMetrics.command(CommandTable.echo)
                outcome = .reply(echoed)
            } else {
                let arguments = try checked ?? Arguments(words)
                outcome = await self.connection.dispatcher.handle(arguments, session: &self.session)
            }
        } catch {
            outcome = .reply(.reply(for: error))
        }
        guard await self.queueOutcome(outcome) else { return false }
        if self.session.version != versionBefore {
            // HELLO's reply, then the handler encodes pushes in the new protocol: one slot, one write.
            let (bytes, count) = self.replies.take()
            let slot = Connection.Slot.versionChange(bytes, self.session.version)
            guard await self.queue.push(slot, weight: slot.weight, replies: count) else { return false }
        }
        return true
    }

    /// After a batch: its replies to the writer, then the idle marker that lets the handler run
    /// what follows on the lane.
    private mutating func endBatch(count: Int) async -> Bool {
        guard await self.replies.push(to: self.queue) else { return false }
        if let message = self.session.subscriber.endRequests() {
            // Its tenant left this server while these ran: told after their replies.
            _ = await self.queueOutcome(.replyAndClose(.error(message)))
            return false
        }
        self.taken += count
        guard self.lanes else { return true }
        let slot = Connection.Slot.idle(self.taken, self.connection.lane(for: self.session, state: self.state))
        return await self.queue.push(slot, weight: 0, replies: 0)
    }

    /// Queues a command's outcome, after what the command changed in the connection's state
    /// (authenticated, its context, its tenant's share).
    /// - Returns: false when the connection is done.
    mutating func queueOutcome(_ outcome: CommandOutcome) async -> Bool {
        var outcome = outcome
        if self.session.closeAfterReply, case .reply(let value) = outcome { outcome = .replyAndClose(value) }
        var closing = false
        if case .replyAndClose = outcome { closing = true }
        self.commandRan(closing: closing)
        switch outcome {
        case .reply(let value):
            let bytes = self.replies.append(value, version: self.session.version)
            ServerStats.shared.sent(bytes)
            (self.session.pathTarget.current ?? self.session.tenant)?.counters.replied(bytes: bytes)
            return self.replies.isFull ? await self.replies.push(to: self.queue) : true
        case .post(let tenant, let ticket):
            let slot = Connection.Slot.post(tenant, ticket, self.session.version)
            guard await self.replies.push(to: self.queue) else { return false }
            return await self.queue.push(slot, weight: slot.weight)
        case .replyAndClose(let value):
            let slot = Connection.Slot.close(value, self.session.version)
            if case .close(let bytes) = slot {
                ServerStats.shared.sent(bytes.readableBytes)
                (self.session.pathTarget.current ?? self.session.tenant)?.counters.replied(bytes: bytes.readableBytes)
            }
            if await self.replies.push(to: self.queue) { _ = await self.queue.push(slot, weight: slot.weight) }
            return false
        case .delivered:
            return true
        }
    }

    /// What a command changed, as ``ConnectionState`` says: the gate and the queue widened at
    /// AUTH, the subscriber's context moved, the tenant's share charged to its new tenant.
    private mutating func commandRan(closing: Bool) {
        let actions = self.state.commandRan(
            ConnectionState.Session(
                authenticated: self.session.principal != nil,
                tenantID: self.session.tenantID,
                subscribedMode: self.session.isInSubscribedMode,
                closing: closing
            )
        )
        let gate = self.connection.gate
        if actions.authenticate {
            gate.authenticated()
            self.queue.widen(limit: FixedLimits.replyWindow, byteLimit: FixedLimits.replyWindowBytes)
        }
        if let move = actions.moveContext {
            self.connection.dispatcher.contexts.move(self.session.subscriber, from: move.from, to: move.to)
        }
        if let charge = actions.charge {
            // Its requests are now charged to its new tenant.
            let admission = self.connection.dispatcher.admission
            if let account = self.account { admission.detach(account) }
            self.account = charge.map { admission.attach($0) }
            gate.setAccount(self.account)
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
