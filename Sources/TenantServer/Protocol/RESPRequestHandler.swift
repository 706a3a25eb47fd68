import DequeModule
import NIOCore
import RESP
import Synchronization
import TenantEngine

/// What the connection's task writes through the handler: reply bytes, or the marker that it has
/// answered every request handed to it so far (with the lane the session allows from there).
enum ConnectionOutput: Sendable {
    case bytes(ByteBuffer)
    /// Every request up to the `handed`-th the handler passed on is answered, its reply written
    /// before this marker.
    case idle(handed: Int, lane: SyncLane?)
    /// Every reply before it has reached the handler: the task may run a command whose tenants
    /// deliver its replies here (``PushSink``).
    case barrier(EventLoopPromise<Void>)
    /// The client speaks this protocol from here on (HELLO's reply is just before): the pushes
    /// after it are encoded so.
    case pushVersion(RESPVersion)
    /// The reply before it is the connection's last (QUIT, an error that closes it): no push
    /// goes after it.
    case closing
}

/// Turns a connection's bytes into ``RESPRequest``s with ``RESPRequestParser``, holding the
/// connection to the contract's limits.
///
/// It hands the requests over in batches, every whole request one read brought in one batch: the
/// connection's reader then pays its wake-up and the stream's bookkeeping once per read, not once
/// per request, which is most of what a pipelining client costs.
///
/// It reads no further, neither parsing nor asking the socket for more, while the connection's
/// ``RequestGate`` says enough requests wait: what one client can make the server hold is bounded
/// by the gate's bound plus one request. Before authentication the parser applies Redis 7's
/// stricter limits. After a protocol error it discards everything, as the connection is about
/// to close. The end of the client's input is passed on only after every request before it.
///
/// **The synchronous lane.** Once the connection's task has answered everything handed to it
/// and says the session allows it (a ``SyncLane``: authenticated, a tenant context placed on
/// this loop), the handler runs the hot commands itself, inside `channelRead`, with no task and
/// no `await` (``CommandDispatcher/runHot(_:_:lane:)``). Their replies queue in the handler's
/// outbox, in request order; a POST's waits there for the loop's ``LoopTurn`` to write its log.
/// The first request the lane does not take goes to the task, after the lane's POSTs are
/// answered, and the handler hands over every later one until the task's ``ConnectionOutput/idle(handed:lane:)``
/// marker says it is done with them: the two never run requests of one connection at once, and
/// their replies leave in request order. ``LaneRouting`` is the state machine that decides, the
/// handler does what it says.
final class RESPRequestHandler: ChannelDuplexHandler, LoopTurn.Waiter {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = [RESPRequest]
    typealias OutboundIn = ConnectionOutput
    typealias OutboundOut = ByteBuffer
    typealias Routing = LaneRouting<SyncLane>

    /// A reply waiting in the outbox.
    enum Pending {
        case bytes(ByteBuffer)
        case post(Tenant, PostTicket, RESPVersion)
        /// A POST whose log's write failed: it is answered with the error.
        case failedPost(Tenant, TenantError, RESPVersion)
        /// Bytes the task wrote while lane replies before them still waited.
        case passthrough(ByteBuffer, EventLoopPromise<Void>?)
    }

    private var parser: RESPRequestParser
    private var buffer = ByteBuffer()
    private let gate: RequestGate
    private var waiting = false
    /// The account it waits on when it waits for its tenant's share (``waiting`` is then set too).
    private var waitingForAdmission: TenantAdmission.Account?
    private var readHeld = false
    private var broken = false
    private var inputClosed = false
    private var inputClosedPassedOn = false
    private var context: ChannelHandlerContext?
    private let dispatcher: CommandDispatcher?
    private var turn: LoopTurn?
    /// Who runs the next request: the lane or the connection's task.
    private var routing = Routing()
    var laneState: Routing.State { self.routing.state }
    private var outbox = Deque<Pending>()
    /// POSTs in the outbox, waiting for their log.
    private var pendingPosts = 0
    /// The lane's reply bytes in the outbox.
    private var outboxBytes = 0
    /// Lane replies after the outbox's last item, encoded into one buffer as they come.
    private var tail = ByteBuffer()
    /// Requests the lane ran in this parse: past ``Connection/requestsPerTurn`` the handler lets
    /// the loop's other work go first, as the task does.
    private var ranThisTurn = 0
    /// Hot commands for tenants on another loop, gathered in this parse (``RemoteRun``).
    private var remoteBatch: [RemoteRun.Request] = []
    /// The loop of the gathered commands' tenants.
    private var remoteLoop: (any EventLoop)?
    /// Whether a POST is in ``remoteBatch``.
    private var remoteBatchHasPost = false
    /// A ``RemoteRun`` is away: nothing else runs until its replies are back.
    private var remoteInFlight = false
    /// The channel's writability as its last change said (the lane asks on every request; the
    /// channel's own answer costs a retain and an atomic load).
    private var writable = true
    /// The lane's tenant's account on this loop (``LoopTurn/Account``), kept while the tenant is
    /// the same.
    private var account: (tenant: Tenant, account: LoopTurn.Account)?
    /// Held back for its tenant's share of the loop's turn, registered with the turn.
    private var heldForShare = false
    /// The last turn it ran a lane request of its local tenant in.
    private var ranInTurn: UInt64 = 0
    /// Requests were handed downstream since the last `channelReadComplete` passed on.
    private var handedSinceReadComplete = false
    /// Nonzero while requests are being parsed (the end of input is not passed on then).
    private var parsing = 0
    /// Bytes the task wrote while a remote run was away: they go after its replies.
    private var afterRemote: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// A request parsed but held until the lane's POSTs are answered (it reads their effects, or
    /// goes to the task).
    private var held: RESPRequest?
    /// Set while the lane waits: for its POSTs, or for the client to read its replies.
    private var waitingForLane = false
    var turnMark: UInt64 = 0
    var turnTenants: [ObjectIdentifier] = []
    var flushMark: UInt64 = 0
    /// Where tenants deliver the connection's pub/sub pushes (nil: they go through its task).
    let pushes: PushSink?
    /// `client-output-buffer-limit pubsub`, kept here for the pushes.
    private let pubSubLimit: PubSubLimit
    /// Since when the connection's unsent bytes have been over the pub/sub soft limit.
    private var overSoftLimitSince: NIODeadline?
    /// The protocol pushes are encoded in: the client's, as the replies that passed say.
    private var pushVersion = RESPVersion.resp2
    /// Set after the connection's last reply: pushes are refused.
    private var closingAfterReply = false
    /// The task's bytes waiting in the outbox behind the lane's replies.
    private var passthroughBytes = 0
    /// What was last counted in `maxmemory-clients` for the pushes (``PushSink/noteHeld(_:)``):
    /// measured again after each write while nonzero.
    private var countedForPushes = 0
    /// Its socket, when the connection may move to its tenant's loop.
    private let socket: ConnectionSocket?
    /// When the lane's last command in this parse ended (0: none yet), the next one's start
    /// (``CommandDispatcher/runHot(_:_:lane:target:clock:)``).
    private var clock: UInt64 = 0

    /// - Parameters:
    ///   - dispatcher: runs the hot commands on the lane (nil: every request goes to the task).
    ///   - pushes: the sink its tenants deliver pushes to (``pushed(_:)``).
    init(
        limits: RESPRequestParser.Limits,
        gate: RequestGate,
        dispatcher: CommandDispatcher? = nil,
        pushes: PushSink? = nil,
        socket: ConnectionSocket? = nil,
        carried: CarriedSession? = nil
    ) {
        self.parser = RESPRequestParser(limits: limits, authenticated: carried != nil)
        self.gate = gate
        self.dispatcher = dispatcher
        self.pushes = pushes
        self.pubSubLimit = dispatcher?.limits.pubSub ?? PubSubLimit()
        self.socket = socket
        if let carried {
            // A connection that moved here: what its last handler read and did not parse comes
            // first, and pushes are in the protocol it spoke there.
            self.buffer = carried.unparsed
            self.pushVersion = carried.version
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.pushes?.attach(self)
        self.writable = context.channel.isWritable
        if let dispatcher = self.dispatcher {
            let turn = LoopTurn.of(context.eventLoop)
            turn.turnBudget = dispatcher.limits.turnBudget
            self.turn = turn
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        self.gate.onWakeUp { reason in
            eventLoop.execute { loopBound.value.wokenUp(reason) }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.pushes?.attach(nil)
        self.gate.onWakeUp(nil)
        self.gate.leaveAdmission()
        self.buffer = ByteBuffer()
        let dropped = self.outbox
        self.outbox = []
        self.tail = ByteBuffer()
        self.pendingPosts = 0
        self.outboxBytes = 0
        for case .passthrough(_, let promise) in dropped { promise?.fail(ChannelError.ioOnClosedChannel) }
        for (_, promise) in self.afterRemote { promise?.fail(ChannelError.ioOnClosedChannel) }
        self.afterRemote = []
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.flushAtEndOfTurn(context: context)
        // Downstream is the connection's task's stream: told only when this read handed it
        // requests (a read the lane answered whole has nothing for it).
        if self.handedSinceReadComplete {
            self.handedSinceReadComplete = false
            context.fireChannelReadComplete()
        }
    }

    /// The lane's replies are written at the end of the loop's turn, with the other connections'.
    private func flushAtEndOfTurn(context: ChannelHandlerContext) {
        guard !self.outboxIsEmpty else { return }
        if let turn = self.turn { turn.flushAtEnd(self) } else { self.writeOutbox(context: context) }
    }

    func turnEnded() {
        guard let context = self.context else { return }
        self.writeOutbox(context: context)
    }

    func shareResumed() {
        self.heldForShare = false
        self.resumeLane()
    }

    /// The account of the lane's tenant when the tenant is on this loop.
    private func localAccount() -> LoopTurn.Account? {
        self.account(for: self.routing.lane?.tenant)
    }

    /// The account of `tenant` on this loop's turn, when it is placed here (the last one asked
    /// for is kept: a connection's requests are mostly for one tenant).
    private func account(for tenant: Tenant?) -> LoopTurn.Account? {
        guard let tenant, let turn = self.turn else { return nil }
        if let cached = self.account, cached.tenant === tenant, !cached.account.retired { return cached.account }
        guard let context = self.context, tenant.isPlaced(on: context.eventLoop.executor) else { return nil }
        let account = turn.account(for: tenant)
        self.account = (tenant, account)
        return account
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.writable = context.channel.isWritable
        self.recountPushes(context: context)
        if self.writable { self.resumeLane() }
        context.fireChannelWritabilityChanged()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .bytes(let bytes):
            if self.remoteInFlight {
                // After the replies of the requests away (a MIGRATED the task tells unasked
                // must not come before them).
                self.afterRemote.append((bytes, promise))
            } else if self.outboxIsEmpty {
                context.write(Self.wrapOutboundOut(bytes), promise: promise)
            } else {
                self.sealTail()
                self.passthroughBytes += bytes.readableBytes
                self.outbox.append(.passthrough(bytes, promise))
            }
        case .barrier(let reached):
            promise?.succeed(())
            reached.succeed(())
        case .pushVersion(let version):
            promise?.succeed(())
            self.pushVersion = version
        case .closing:
            promise?.succeed(())
            self.closingAfterReply = true
        case .idle(let count, let lane):
            promise?.succeed(())
            guard self.routing.taskIsIdle(handed: count, lane: lane) == .resume else { return }
            if self.moveToTenantLoop(context: context) { return }
            if self.waitingForLane {
                // A hot command waited for this marker: it runs now, on the lane if there is one.
                self.resumeLane()
            } else if self.buffer.readableBytes > 0 && !self.waiting {
                // Bytes the gate held back: parse them now that the lane may take them.
                if self.parse(context: context) { context.fireChannelReadComplete() }
                self.writeOutbox(context: context)
            }
        }
    }

    /// Moves the connection to its tenant's loop when the lane just handed over names a tenant on
    /// another loop and nothing is in flight: everything answered and written, no request half
    /// read, no subscription (``ConnectionSocket``). Its channel closes; the bytes it read and did
    /// not parse go with it.
    /// - Returns: whether it is moving (nothing more happens on this channel).
    private func moveToTenantLoop(context: ChannelHandlerContext) -> Bool {
        guard let socket = self.socket, let lane = self.routing.lane, let tenant = lane.tenant,
            let loop = tenant.placement as? any EventLoop, loop !== context.eventLoop,
            !self.waiting, !self.waitingForLane, self.laneIsDone, self.afterRemote.isEmpty,
            !self.inputClosed, !self.broken, !self.closingAfterReply, self.pushes?.hasSubscriptions != true,
            !self.parser.isInsideRequest, socket.mayMove
        else { return false }
        // Its replies so far must be on the wire: a client that does not read them keeps it here.
        context.flush()
        guard (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) == 0,
            socket.prepare(to: loop, unparsed: self.buffer)
        else { return false }
        self.buffer = ByteBuffer()
        self.broken = true
        ServerStats.shared.connectionMoves.wrappingAdd(1, ordering: .relaxed)
        context.close(promise: nil)
        return true
    }

    func flush(context: ChannelHandlerContext) {
        // With lane replies waiting, the task's bytes go out behind them, when they are written.
        if self.outboxIsEmpty { context.flush() }
    }

    // MARK: - Pushes

    /// A push a tenant delivered (``PushSink``), on this loop: it goes with the lane's replies,
    /// after those already there, at the end of the loop's turn.
    /// - Returns: whether it was taken; over `client-output-buffer-limit pubsub` (what the
    ///   connection holds unsent: its outbox and the channel's buffer), it is refused and the
    ///   connection closed, as Redis closes a subscriber too far behind.
    func pushed(_ value: RESPValue) -> PushSink.Outcome {
        guard let context = self.context, context.channel.isActive, !self.closingAfterReply else { return .gone }
        let start = self.tail.writerIndex
        RESPEncoder.encode(value, version: self.pushVersion, into: &self.tail)
        self.outboxBytes += self.tail.writerIndex - start
        let held = self.unsentBytes(context: context)
        let limit = self.pubSubLimit
        if limit.hardBytes > 0 && held > limit.hardBytes { return self.refusePush(from: start, context: context) }
        if limit.softBytes > 0 && held > limit.softBytes {
            let now = NIODeadline.now()
            let since = self.overSoftLimitSince ?? now
            self.overSoftLimitSince = since
            if now - since >= .seconds(Int64(limit.softSeconds)) {
                return self.refusePush(from: start, context: context)
            }
        } else {
            self.overSoftLimitSince = nil
        }
        self.countedForPushes = held
        self.pushes?.noteHeld(held)
        self.flushAtEndOfTurn(context: context)
        return .accepted
    }

    /// What the connection holds unsent: its outbox (the lane's replies and pushes, the task's
    /// bytes behind them or behind a remote run) and the channel's buffer.
    private func unsentBytes(context: ChannelHandlerContext) -> Int {
        let buffered = (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
        return self.outboxBytes + self.passthroughBytes + buffered
            + self.afterRemote.reduce(0) { $0 + $1.0.readableBytes }
    }

    /// Measures again what the pushes hold, once some were counted (after a write, or when the
    /// client reads).
    private func recountPushes(context: ChannelHandlerContext) {
        guard self.countedForPushes > 0 else { return }
        let held = self.unsentBytes(context: context)
        guard held != self.countedForPushes else { return }
        self.countedForPushes = held
        self.pushes?.noteHeld(held)
    }

    /// Takes back the push encoded from `start` in the tail, and closes the connection.
    private func refusePush(from start: Int, context: ChannelHandlerContext) -> PushSink.Outcome {
        self.outboxBytes -= self.tail.writerIndex - start
        self.tail.moveWriterIndex(to: start)
        context.close(promise: nil)
        return .overLimit
    }

    // MARK: - The lane

    /// The log of `tenant` is written up to `upTo` (LoopTurn): the POSTs it covers are answered.
    func logWritten(_ tenant: Tenant, upTo: UInt64, error: TenantError?) {
        guard let context = self.context else { return }
        if let error {
            // The POSTs it covered get the error now (they may wait behind another tenant's).
            for index in self.outbox.indices {
                guard case .post(let owner, let ticket, let version) = self.outbox[index], owner === tenant,
                    ticket.lsn <= upTo, tenant.outcomeOnLoop(of: ticket) == nil
                else { continue }
                self.outbox[index] = .failedPost(tenant, error, version)
            }
        }
        self.writeOutbox(context: context)
        guard self.pendingPosts == 0 else { return }
        if self.waitingForLane {
            self.resumeLane()
        } else if !self.waiting {
            self.resumeReading(context: context)
        }
    }

    /// Writes the outbox's replies up to the first POST still waiting for its log, the lane's
    /// in one buffer (one write for a turn's replies), the task's as they came.
    private func writeOutbox(context: ChannelHandlerContext) {
        var wrote = false
        var coalesced: ByteBuffer?
        func emit() {
            guard let bytes = coalesced else { return }
            coalesced = nil
            context.write(Self.wrapOutboundOut(bytes), promise: nil)
            wrote = true
        }
        defer {
            emit()
            if wrote { context.flush() }
            self.recountPushes(context: context)
            self.passInputClosedIfDone(context: context)
        }
        defer {
            // Everything before it is written: the tail goes in the same buffer.
            if self.outbox.isEmpty && self.tail.readableBytes > 0 {
                self.outboxBytes -= self.tail.readableBytes
                if coalesced == nil {
                    coalesced = self.tail
                } else {
                    coalesced!.writeBuffer(&self.tail)
                }
                self.tail = ByteBuffer()
            }
        }
        while let first = self.outbox.popFirst() {
            switch first {
            case .bytes(let bytes):
                self.outboxBytes -= bytes.readableBytes
                if coalesced == nil {
                    coalesced = bytes
                } else {
                    coalesced!.writeImmutableBuffer(bytes)
                }
            case .passthrough(let bytes, let promise):
                self.passthroughBytes -= bytes.readableBytes
                emit()
                context.write(Self.wrapOutboundOut(bytes), promise: promise)
                wrote = true
            case .post(let tenant, let ticket, let version):
                guard let outcome = tenant.outcomeOnLoop(of: ticket) else {
                    self.outbox.prepend(first)
                    return
                }
                let value: RESPValue
                switch outcome {
                case .success(let seq): value = .integer(Int64(seq))
                case .failure(let error): value = .reply(for: error)
                }
                if coalesced == nil { coalesced = context.channel.allocator.buffer(capacity: 1024) }
                let start = coalesced!.writerIndex
                RESPEncoder.encode(value, version: version, into: &coalesced!)
                let size = coalesced!.writerIndex - start
                ServerStats.shared.sent(size)
                tenant.counters.replied(bytes: size)
                self.pendingPosts -= 1
            case .failedPost(let tenant, let error, let version):
                if coalesced == nil { coalesced = context.channel.allocator.buffer(capacity: 1024) }
                let start = coalesced!.writerIndex
                RESPEncoder.encode(.reply(for: error), version: version, into: &coalesced!)
                let size = coalesced!.writerIndex - start
                ServerStats.shared.sent(size)
                tenant.counters.replied(bytes: size)
                self.pendingPosts -= 1
            }
        }
    }

    /// The lane may go on: parse what waits.
    private func resumeLane() {
        guard self.waitingForLane, let context = self.context else { return }
        self.waitingForLane = false
        self.waiting = false
        if self.parse(context: context) { context.fireChannelReadComplete() }
        self.writeOutbox(context: context)
        if !self.waiting { self.resumeReading(context: context) }
    }

    /// Stops parsing until the lane's POSTs are answered or the client reads (``resumeLane()``).
    private func waitForLane(holding request: RESPRequest?) {
        self.held = request
        self.waitingForLane = true
        self.waiting = true
    }

    /// What the lane has on its hands, for ``LaneRouting``.
    private var pending: Routing.Pending {
        Routing.Pending(
            posts: self.pendingPosts,
            gathered: self.remoteBatch.count,
            gatheredPost: self.remoteBatchHasPost,
            remoteInFlight: self.remoteInFlight
        )
    }

    /// Runs `request` on the lane, or adds it to `batch` for the task, as ``LaneRouting`` says.
    /// - Returns: false when it is held: the parse stops until the lane resumes.
    private func route(_ request: RESPRequest, into batch: inout [RESPRequest]) -> Bool {
        var hot: Routing.Hot?
        var spec: CommandSpec?
        var target: LaneTarget?
        var targetLoop: (any EventLoop)?
        var isHotName = false
        if case .command(let words) = request, let found = CommandTable.hotSpec(for: words[0]) {
            isHotName = true
            if self.dispatcher != nil, let lane = self.routing.lane, let context = self.context {
                switch lane.resolve(found, words) {
                case .anywhere:
                    spec = found
                    hot = Routing.Hot(settlesFirst: found.settlesFirst, tenantIsHere: true)
                case .tenant(let resolved):
                    let here = resolved.tenant.isPlaced(on: context.eventLoop.executor)
                    targetLoop = here || found.runsHereOnly ? nil : resolved.tenant.placement as? any EventLoop
                    if here || targetLoop != nil {
                        spec = found
                        target = resolved
                        let joins = self.remoteBatch.isEmpty || (targetLoop != nil && targetLoop === self.remoteLoop)
                        hot = Routing.Hot(settlesFirst: found.settlesFirst, tenantIsHere: here, joinsGathered: joins)
                    }
                case .declined:
                    break
                }
            }
        }
        var action = self.routing.route(hot, isHotName: isHotName, pending: self.pending)
        if action == .runOnLane, let spec, let lane = self.routing.lane, case .command(let words) = request,
            let dispatcher = self.dispatcher
        {
            if let outcome = dispatcher.runHot(spec, words, lane: lane, target: target, clock: &self.clock) {
                // The hot handlers keep nothing of the words: the parser reuses their array.
                self.parser.recycle(words)
                // Its share is the tenant's it ran in (a path-form room's, or the context's).
                if let turn = self.turn, turn.turnBudget > 0,
                    let account = self.account(for: target?.tenant ?? lane.tenant)
                {
                    turn.ran(account)
                    self.ranInTurn = turn.current
                }
                // Counted in the tenant it worked in (the context for PING and ECHO).
                let counted = target?.tenant ?? lane.tenant
                let wireBytes = request.wireBytes
                ServerStats.shared.received(wireBytes)
                counted?.counters.requested(bytes: wireBytes)
                self.ranThisTurn += 1
                switch outcome {
                case .reply(let value):
                    self.appendReply(value, version: lane.version, countedIn: counted)
                case .post(let ticket):
                    guard let tenant = target?.tenant else { preconditionFailure("a POST works in a tenant") }
                    self.sealTail()
                    self.outbox.append(.post(tenant, ticket, lane.version))
                    self.pendingPosts += 1
                    self.turn?.appended(to: tenant, by: self)
                case .delivered:
                    // Its replies are in the outbox already (``pushed(_:)``).
                    break
                }
                return true
            }
            // Its form is not for the lane: it goes as any other command.
            action = self.routing.declined(pending: self.pending)
        }
        switch action {
        case .runOnLane:
            preconditionFailure("the lane runs only hot commands")
        case .gather:
            guard let spec, let target, let targetLoop, case .command(let words) = request else {
                preconditionFailure("gathered a hot command for another loop")
            }
            // The tenant is on another loop: gathered, and sent there at the end of the parse.
            self.remoteLoop = targetLoop
            self.remoteBatch.append(.init(spec: spec, words: words, wireBytes: request.wireBytes, target: target))
            if !spec.settlesFirst { self.remoteBatchHasPost = true }
            self.ranThisTurn += 1
            return true
        case .hold:
            self.waitForLane(holding: request)
            return false
        case .handOver:
            self.gate.handedOver(request.cost)
            batch.append(request)
            return true
        }
    }

    /// Sends the hot commands gathered for a tenant on another loop there, in one hop; parsing
    /// waits until their replies are back (``remoteReplies(_:)``).
    private func sendRemoteBatch(context: ChannelHandlerContext) {
        guard !self.remoteBatch.isEmpty, !self.remoteInFlight, let lane = self.routing.lane,
            let dispatcher = self.dispatcher, let loop = self.remoteLoop
        else { return }
        guard context.channel.isWritable else {
            // The client does not read: the batch goes once it does (channelWritabilityChanged).
            if !self.waitingForLane { self.waitForLane(holding: self.held) }
            return
        }
        let requests = self.remoteBatch
        self.remoteBatch = []
        self.remoteBatchHasPost = false
        self.remoteInFlight = true
        if !self.waitingForLane { self.waitForLane(holding: self.held) }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let home = context.eventLoop
        let run = RemoteRun(requests, on: loop, lane: lane, dispatcher: dispatcher) { replies, leftover in
            LoopMailbox.of(loop).send(to: home) { handler.value.remoteReplies(replies, leftover: leftover) }
        }
        LoopMailbox.of(home).send(to: loop) { run.run() }
    }

    /// A remote run's replies, in request order: written like the lane's own, and parsing goes on,
    /// with the requests the run left (over its reply bound) first, once the client reads.
    private func remoteReplies(_ replies: ByteBuffer, leftover: [RemoteRun.Request]) {
        self.remoteInFlight = false
        guard let context = self.context else { return }
        var replies = replies
        self.outboxBytes += replies.readableBytes
        self.tail.writeBuffer(&replies)
        if !self.afterRemote.isEmpty {
            self.sealTail()
            for (bytes, promise) in self.afterRemote {
                self.passthroughBytes += bytes.readableBytes
                self.outbox.append(.passthrough(bytes, promise))
            }
            self.afterRemote = []
        }
        self.remoteBatch = leftover + self.remoteBatch
        self.remoteBatchHasPost = self.remoteBatch.contains { !$0.spec.settlesFirst }
        if self.remoteBatch.isEmpty { self.remoteLoop = nil }
        self.writeOutbox(context: context)
        // Whatever else resumed it meanwhile: what the run left, and what was read, go on now.
        self.waitingForLane = true
        self.waiting = true
        self.resumeLane()
    }

    /// Queues a lane reply's bytes after the outbox's others.
    private func appendReply(_ value: RESPValue, version: RESPVersion, countedIn tenant: Tenant?) {
        let start = self.tail.writerIndex
        RESPEncoder.encode(value, version: version, into: &self.tail)
        let size = self.tail.writerIndex - start
        self.outboxBytes += size
        ServerStats.shared.sent(size)
        tenant?.counters.replied(bytes: size)
    }

    /// Puts the tail's replies into the outbox, before an item that must come after them.
    private func sealTail() {
        guard self.tail.readableBytes > 0 else { return }
        self.outbox.append(.bytes(self.tail))
        self.tail = ByteBuffer()
    }

    /// Whether anything of the lane waits to be written.
    private var outboxIsEmpty: Bool { self.outbox.isEmpty && self.tail.readableBytes == 0 }

    /// Whether the lane must wait before the next request: the client does not read what was
    /// written (resumed when the channel is writable again), or the outbox is full behind a POST
    /// waiting for its log (resumed when the turn answers it). Replies not behind a POST are
    /// written first.
    private func laneIsFull(context: ChannelHandlerContext) -> Bool {
        guard self.routing.lane != nil else { return false }
        if self.outboxBytes >= FixedLimits.outboxWriteBytes || self.outbox.count >= FixedLimits.replyWindow {
            self.writeOutbox(context: context)
        }
        if !self.writable { return true }
        return self.pendingPosts > 0
            && (self.outbox.count >= FixedLimits.replyWindow || self.outboxBytes >= FixedLimits.replyWindowBytes)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = Self.unwrapInboundIn(data)
        // After the end of input (a TLS connection told so at shutdown) nothing more is read.
        if self.broken || self.inputClosed { return }
        if self.buffer.readableBytes == 0 {
            self.buffer = incoming
        } else {
            self.buffer.writeBuffer(&incoming)
        }
        let waited = self.waiting
        self.ranThisTurn = 0
        _ = self.parse(context: context)
        if waited && !self.waiting {
            // It waited for its tenant's share and this read found room: it left the queue, and
            // nothing else will resume it.
            self.resumeReading(context: context)
        }
    }

    func read(context: ChannelHandlerContext) {
        if self.waiting && !self.readsAhead {
            // Enough requests wait: the socket is read again once they are answered.
            self.readHeld = true
        } else {
            context.read()
        }
    }

    /// Whether the socket stays armed while the connection waits: only for the lane (a remote
    /// run's replies, its POSTs' log, the client reading its replies, its tenant's share), and
    /// only while the unparsed bytes are under ``readAheadBytes``. A connection that waits for
    /// its remote run's replies, as every unpipelined request to a tenant on another loop does,
    /// would otherwise take its socket out of the poll set and put it back for each request (two
    /// epoll_ctl calls); what comes meanwhile is parsed when the lane resumes. The gate's waits
    /// (the task's window, the tenant's admission) hold the read as before.
    private var readsAhead: Bool {
        self.waitingForLane && self.waitingForAdmission == nil && self.buffer.readableBytes < FixedLimits.readAheadBytes
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            self.inputClosed = true
            // Passed on once the requests before it are handed over, and the lane's answered.
            if self.waiting || !self.laneIsDone { return }
            self.dropPartialRequest()
            self.inputClosedPassedOn = true
        }
        if let idle = event as? IdleStateHandler.IdleStateEvent, case .read = idle {
            // `timeout`: a client that sent nothing for that long is closed unless it subscribes,
            // as Redis closes it (a pipeliner that stopped reading its replies included).
            // A connection held for its tenant's share is not idle: its requests wait.
            if self.pushes?.hasSubscriptions != true && self.waitingForAdmission == nil { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func wokenUp(_ reason: RequestGate.WakeUp) {
        if self.waitingForLane {
            // The lane resumes it; the gate's window is not what it waits for.
            if case .admission(let account) = reason { account.passOn() }
            return
        }
        var wakingAccount: TenantAdmission.Account?
        if case .admission(let account) = reason {
            guard self.waitingForAdmission === account else {
                // Not waiting for it (any more): the next connection of the tenant gets it.
                account.passOn()
                return
            }
            wakingAccount = account
            self.waitingForAdmission = nil
        } else if self.waitingForAdmission != nil {
            return  // waiting for the tenant's share, not for its own window
        }
        guard let context = self.context, self.waiting else {
            wakingAccount?.passOn()
            return
        }
        self.waiting = false
        let handedOver = self.parse(context: context)
        if let wakingAccount, self.waitingForAdmission !== wakingAccount,
            !handedOver || self.gate.account !== wakingAccount
        {
            // Nothing was charged to the account that woke it: its next waiter gets the turn.
            wakingAccount.passOn()
        }
        if handedOver {
            // Readers downstream (NIOAsyncChannel) take what was read at the end of a read.
            context.fireChannelReadComplete()
        }
        // What the lane ran in this parse (after an idle marker) goes out with the turn.
        self.flushAtEndOfTurn(context: context)
        if !self.waiting { self.resumeReading(context: context) }
    }

    /// It waits no more: the end of input, held back behind the requests, is passed on, and a
    /// held read goes out.
    private func resumeReading(context: ChannelHandlerContext) {
        self.passInputClosedIfDone(context: context)
        if self.readHeld {
            self.readHeld = false
            context.read()
        }
    }

    /// Whether the lane has nothing left to answer: no POST waiting for its log, no remote run
    /// away or gathered, no request held, no reply unwritten. The end of the client's input
    /// waits for this: the connection's task closes the channel once it sees it.
    private var laneIsDone: Bool {
        self.pendingPosts == 0 && !self.remoteInFlight && self.remoteBatch.isEmpty && self.held == nil
            && self.outboxIsEmpty
    }

    /// Passes on the end of the client's input once every request before it is handed over or
    /// answered.
    private func passInputClosedIfDone(context: ChannelHandlerContext) {
        // Never in the middle of a parse: what the buffer still holds is not handed over yet.
        guard self.inputClosed, !self.inputClosedPassedOn, !self.waiting, self.parsing == 0, self.laneIsDone
        else { return }
        self.dropPartialRequest()
        self.inputClosedPassedOn = true
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    /// Hands over every whole request the buffer holds, while the gate allows, in one batch.
    /// - Returns: whether it handed over any.
    @discardableResult
    private func parse(context: ChannelHandlerContext) -> Bool {
        var batch: [RESPRequest] = []
        self.clock = 0
        self.parsing += 1
        self.parse(into: &batch, context: context)
        self.parsing -= 1
        // The recycled words hold slices of the read buffer: let go of them, so that the next
        // read appends to it, or the channel reads into it, without a copy.
        self.parser.releaseRecycled()
        self.sendRemoteBatch(context: context)
        guard !batch.isEmpty else { return false }
        self.handedSinceReadComplete = true
        context.fireChannelRead(Self.wrapInboundOut(batch))
        return true
    }

    private func parse(into batch: inout [RESPRequest], context: ChannelHandlerContext) {
        if let request = self.held {
            self.held = nil
            guard self.route(request, into: &batch) else { return }
        }
        // What the tenant's share lets it hand over before it asks again (each read asks once).
        var allowance = 0
        while !self.broken && self.buffer.readableBytes > 0 {
            if !self.parser.isInsideRequest && self.laneIsFull(context: context) {
                self.waitForLane(holding: nil)
                return
            }
            if !self.parser.isInsideRequest, let turn = self.turn, turn.share != Int.max,
                let account = self.localAccount(), turn.isOverShare(account)
            {
                // Its tenant ran its share of this turn while other tenants are active on the
                // loop: the rest waits for a later turn, behind the tenant's other held
                // connections.
                self.waitForLane(holding: nil)
                if !self.heldForShare {
                    self.heldForShare = true
                    turn.hold(self, for: account, afterRunning: self.ranInTurn == turn.current)
                }
                return
            }
            if self.ranThisTurn >= FixedLimits.requestsPerTurn && !self.parser.isInsideRequest {
                // Bounded turns: the loop's other connections (and the end of this turn, which
                // answers these POSTs) go first; the rest of the read is parsed after them. A
                // task, not ``AfterPoll``: a tenant alone runs its pipelines without a wake-up
                // each 64 requests; while several are active, the turn shares hold it and its
                // held connections resume after the next poll.
                self.ranThisTurn = 0
                self.waitForLane(holding: nil)
                let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
                context.eventLoop.execute { handler.value.resumeLane() }
                return
            }
            if !self.parser.isInsideRequest && !self.gate.mayParse && self.gate.waitForWakeUp() {
                self.waiting = true
                self.waitingForAdmission = nil
                return
            }
            if allowance == 0 && !self.parser.isInsideRequest {
                switch self.gate.waitForAdmission() {
                case .go(let granted):
                    allowance = granted
                    if let stale = self.waitingForAdmission, stale.remove(self.gate) {
                        // Still queued, no wake-up on its way: it takes this room and waits no more.
                        self.waitingForAdmission = nil
                        self.waiting = false
                    }
                case .wait(let account):
                    // The tenant is at its share while other tenants are active.
                    self.waiting = true
                    self.waitingForAdmission = account
                    return
                }
            }
            self.parser.authenticated = self.gate.isAuthenticated
            // Kept only before authentication, where a limit may be judged again (a copy of the
            // parser would also keep its recycled words from being reused).
            let saved = self.parser.authenticated ? nil : (parser: self.parser, readerIndex: self.buffer.readerIndex)
            let action = self.parser.next(&self.buffer)
            if case .protocolError = action, self.parser.hitUnauthenticatedLimit, self.gate.outstandingBytes > 0,
                let saved
            {
                // Over a limit of anonymous clients, but an AUTH before it may not be answered
                // yet: judge it again once every request before it is.
                self.parser = saved.parser
                self.buffer.moveReaderIndex(to: saved.readerIndex)
                self.gate.requireIdle = true
                if self.gate.waitForWakeUp() {
                    self.waiting = true
                    return
                }
                continue
            }
            self.gate.requireIdle = false
            let request: RESPRequest
            switch action {
            case .needMoreData:
                self.buffer.discardReadBytes()
                return
            case .command(let words):
                request = .command(words)
            case .tooBig(let message):
                request = .tooBig(message)
            case .protocolError(let message):
                self.broken = true
                self.buffer = ByteBuffer()
                request = .protocolError(message)
            }
            if allowance != .max { allowance -= 1 }
            guard self.route(request, into: &batch) else { return }
        }
        // An idle connection keeps no read buffer: ten thousand of them would hold 64 KiB each.
        if self.buffer.readableBytes == 0 { self.buffer = ByteBuffer() }
    }

    /// A partial request at the end of the input is dropped, as Redis drops it.
    private func dropPartialRequest() {
        self.buffer = ByteBuffer()
    }
}
