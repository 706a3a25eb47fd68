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

    var parser: RESPRequestParser
    var buffer = ByteBuffer()
    let gate: RequestGate
    var waiting = false
    /// The account it waits on when it waits for its tenant's share (``waiting`` is then set too).
    var waitingForAdmission: TenantAdmission.Account?
    var readHeld = false
    var broken = false
    var inputClosed = false
    var inputClosedPassedOn = false
    var context: ChannelHandlerContext?
    let dispatcher: CommandDispatcher?
    var turn: LoopTurn?
    /// Who runs the next request: the lane or the connection's task.
    var routing = Routing()
    var laneState: Routing.State { self.routing.state }
    var outbox = Deque<Pending>()
    /// POSTs in the outbox, waiting for their log.
    var pendingPosts = 0
    /// The lane's reply bytes in the outbox.
    var outboxBytes = 0
    /// Lane replies after the outbox's last item, encoded into one buffer as they come.
    var tail = ByteBuffer()
    /// Requests the lane ran in this parse: past ``Connection/requestsPerTurn`` the handler lets
    /// the loop's other work go first, as the task does.
    var ranThisTurn = 0
    /// Hot commands for tenants on another loop, gathered in this parse (``RemoteRun``).
    var remoteBatch: [RemoteRun.Request] = []
    /// The loop of the gathered commands' tenants.
    var remoteLoop: (any EventLoop)?
    /// Whether a POST is in ``remoteBatch``.
    var remoteBatchHasPost = false
    /// A ``RemoteRun`` is away: nothing else runs until its replies are back.
    var remoteInFlight = false
    /// The channel's writability as its last change said (the lane asks on every request; the
    /// channel's own answer costs a retain and an atomic load).
    var writable = true
    /// The lane's tenant's account on this loop (``LoopTurn/Account``), kept while the tenant is
    /// the same.
    var account: (tenant: Tenant, account: LoopTurn.Account)?
    /// Held back for its tenant's share of the loop's turn, registered with the turn.
    var heldForShare = false
    /// The last turn it ran a lane request of its local tenant in.
    var ranInTurn: UInt64 = 0
    /// Requests were handed downstream since the last `channelReadComplete` passed on.
    var handedSinceReadComplete = false
    /// Nonzero while requests are being parsed (the end of input is not passed on then).
    var parsing = 0
    /// Bytes the task wrote while a remote run was away: they go after its replies.
    var afterRemote: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    /// A request parsed but held until the lane's POSTs are answered (it reads their effects, or
    /// goes to the task).
    var held: RESPRequest?
    /// Set while the lane waits: for its POSTs, or for the client to read its replies.
    var waitingForLane = false
    var turnMark: UInt64 = 0
    var turnTenants: [ObjectIdentifier] = []
    var flushMark: UInt64 = 0
    /// Where tenants deliver the connection's pub/sub pushes (nil: they go through its task).
    let pushes: PushSink?
    /// `client-output-buffer-limit pubsub`, kept here for the pushes.
    let pubSubLimit: PubSubLimit
    /// Since when the connection's unsent bytes have been over the pub/sub soft limit.
    var overSoftLimitSince: NIODeadline?
    /// The protocol pushes are encoded in: the client's, as the replies that passed say.
    var pushVersion = RESPVersion.resp2
    /// Set after the connection's last reply: pushes are refused.
    var closingAfterReply = false
    /// The task's bytes waiting in the outbox behind the lane's replies.
    var passthroughBytes = 0
    /// What was last counted in `maxmemory-clients` for the pushes (``PushSink/noteHeld(_:)``):
    /// measured again after each write while nonzero.
    var countedForPushes = 0
    /// Its socket, when the connection may move to its tenant's loop.
    let socket: ConnectionSocket?
    /// When the lane's last command in this parse ended (0: none yet), the next one's start
    /// (``CommandDispatcher/runHot(_:_:lane:target:clock:)``).
    var clock: UInt64 = 0

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
    func flushAtEndOfTurn(context: ChannelHandlerContext) {
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
    func localAccount() -> LoopTurn.Account? {
        self.account(for: self.routing.lane?.tenant)
    }

    /// The account of `tenant` on this loop's turn, when it is placed here (the last one asked
    /// for is kept: a connection's requests are mostly for one tenant).
    func account(for tenant: Tenant?) -> LoopTurn.Account? {
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
    func moveToTenantLoop(context: ChannelHandlerContext) -> Bool {
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
    var readsAhead: Bool {
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

    func wokenUp(_ reason: RequestGate.WakeUp) {
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
    func resumeReading(context: ChannelHandlerContext) {
        self.passInputClosedIfDone(context: context)
        if self.readHeld {
            self.readHeld = false
            context.read()
        }
    }

    /// Whether the lane has nothing left to answer: no POST waiting for its log, no remote run
    /// away or gathered, no request held, no reply unwritten. The end of the client's input
    /// waits for this: the connection's task closes the channel once it sees it.
    var laneIsDone: Bool {
        self.pendingPosts == 0 && !self.remoteInFlight && self.remoteBatch.isEmpty && self.held == nil
            && self.outboxIsEmpty
    }

    /// Passes on the end of the client's input once every request before it is handed over or
    /// answered.
    func passInputClosedIfDone(context: ChannelHandlerContext) {
        // Never in the middle of a parse: what the buffer still holds is not handed over yet.
        guard self.inputClosed, !self.inputClosedPassedOn, !self.waiting, self.parsing == 0, self.laneIsDone
        else { return }
        self.dropPartialRequest()
        self.inputClosedPassedOn = true
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

}
