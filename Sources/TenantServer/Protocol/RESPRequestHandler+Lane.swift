import DequeModule
import NIOCore
import RESP
import Synchronization
import TenantEngine

/// The handler's pushes and its lane: hot commands run on the event loop, their replies and
/// POST tickets kept in order in the outbox, and the batches gathered for tenants on other loops.
extension RESPRequestHandler {
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
    func unsentBytes(context: ChannelHandlerContext) -> Int {
        let buffered = (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
        return self.outboxBytes + self.passthroughBytes + buffered
            + self.afterRemote.reduce(0) { $0 + $1.0.readableBytes }
    }

    /// Measures again what the pushes hold, once some were counted (after a write, or when the
    /// client reads).
    func recountPushes(context: ChannelHandlerContext) {
        guard self.countedForPushes > 0 else { return }
        let held = self.unsentBytes(context: context)
        guard held != self.countedForPushes else { return }
        self.countedForPushes = held
        self.pushes?.noteHeld(held)
    }

    /// Takes back the push encoded from `start` in the tail, and closes the connection.
    func refusePush(from start: Int, context: ChannelHandlerContext) -> PushSink.Outcome {
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
    func writeOutbox(context: ChannelHandlerContext) {
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
    func resumeLane() {
        guard self.waitingForLane, let context = self.context else { return }
        self.waitingForLane = false
        self.waiting = false
        if self.parse(context: context) { context.fireChannelReadComplete() }
        self.writeOutbox(context: context)
        if !self.waiting { self.resumeReading(context: context) }
    }

    /// Stops parsing until the lane's POSTs are answered or the client reads (``resumeLane()``).
    func waitForLane(holding request: RESPRequest?) {
        self.held = request
        self.waitingForLane = true
        self.waiting = true
    }

    /// What the lane has on its hands, for ``LaneRouting``.
    var pending: Routing.Pending {
        Routing.Pending(
            posts: self.pendingPosts,
            gathered: self.remoteBatch.count,
            gatheredPost: self.remoteBatchHasPost,
            remoteInFlight: self.remoteInFlight
        )
    }

    /// What routing needs to know of a request: whether it is a hot command, and, when the lane
    /// may run it, its spec and the tenant it works in (here, or on which other loop).
    struct Classified {
        var hot: Routing.Hot?
        var spec: CommandSpec?
        var target: LaneTarget?
        var targetLoop: (any EventLoop)?
        var isHotName = false
    }

    @inline(__always)
    func classify(_ request: RESPRequest) -> Classified {
        var found = Classified()
        guard case .command(let words) = request, let spec = CommandTable.hotSpec(for: words[0]) else { return found }
        found.isHotName = true
        guard self.dispatcher != nil, let lane = self.routing.lane, let context = self.context else { return found }
        switch lane.resolve(spec, words) {
        case .anywhere:
            found.spec = spec
            found.hot = Routing.Hot(settlesFirst: spec.settlesFirst, tenantIsHere: true)
        case .tenant(let resolved):
            let here = resolved.tenant.isPlaced(on: context.eventLoop.executor)
            found.targetLoop = here || spec.runsHereOnly ? nil : resolved.tenant.placement as? any EventLoop
            if here || found.targetLoop != nil {
                found.spec = spec
                found.target = resolved
                let joins =
                    self.remoteBatch.isEmpty || (found.targetLoop != nil && found.targetLoop === self.remoteLoop)
                found.hot = Routing.Hot(settlesFirst: spec.settlesFirst, tenantIsHere: here, joinsGathered: joins)
            }
        case .declined:
            break
        }
        return found
    }

    /// A hot command ran on the lane: its share, its counts, and its reply (or its POST's ticket)
    /// in the outbox.
    @inline(__always)
    func ranOnLane(_ outcome: HotOutcome, _ request: RESPRequest, lane: SyncLane, target: LaneTarget?) {
        // Its share is the tenant's it ran in (a path-form room's, or the context's).
        if let turn = self.turn, turn.turnBudget > 0, let account = self.account(for: target?.tenant ?? lane.tenant) {
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
    }

    /// Runs `request` on the lane, or adds it to `batch` for the task, as ``LaneRouting`` says.
    /// - Returns: false when it is held: the parse stops until the lane resumes.
    func route(_ request: RESPRequest, into batch: inout [RESPRequest]) -> Bool {
        let found = self.classify(request)
        var action = self.routing.route(found.hot, isHotName: found.isHotName, pending: self.pending)
        if action == .runOnLane, let spec = found.spec, let lane = self.routing.lane,
            case .command(let words) = request,
            let dispatcher = self.dispatcher
        {
            if let outcome = dispatcher.runHot(spec, words, lane: lane, target: found.target, clock: &self.clock) {
                // The hot handlers keep nothing of the words: the parser reuses their array.
                self.parser.recycle(words)
                self.ranOnLane(outcome, request, lane: lane, target: found.target)
                return true
            }
            // Its form is not for the lane: it goes as any other command.
            action = self.routing.declined(pending: self.pending)
        }
        let (spec, target, targetLoop) = (found.spec, found.target, found.targetLoop)
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
    func sendRemoteBatch(context: ChannelHandlerContext) {
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
    func remoteReplies(_ replies: ByteBuffer, leftover: [RemoteRun.Request]) {
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
    func appendReply(_ value: RESPValue, version: RESPVersion, countedIn tenant: Tenant?) {
        let start = self.tail.writerIndex
        RESPEncoder.encode(value, version: version, into: &self.tail)
        let size = self.tail.writerIndex - start
        self.outboxBytes += size
        ServerStats.shared.sent(size)
        tenant?.counters.replied(bytes: size)
    }

    /// Puts the tail's replies into the outbox, before an item that must come after them.
    func sealTail() {
        guard self.tail.readableBytes > 0 else { return }
        self.outbox.append(.bytes(self.tail))
        self.tail = ByteBuffer()
    }

    /// Whether anything of the lane waits to be written.
    var outboxIsEmpty: Bool { self.outbox.isEmpty && self.tail.readableBytes == 0 }

    /// Whether the lane must wait before the next request: the client does not read what was
    /// written (resumed when the channel is writable again), or the outbox is full behind a POST
    /// waiting for its log (resumed when the turn answers it). Replies not behind a POST are
    /// written first.
    func laneIsFull(context: ChannelHandlerContext) -> Bool {
        guard self.routing.lane != nil else { return false }
        if self.outboxBytes >= FixedLimits.outboxWriteBytes || self.outbox.count >= FixedLimits.replyWindow {
            self.writeOutbox(context: context)
        }
        if !self.writable { return true }
        return self.pendingPosts > 0
            && (self.outbox.count >= FixedLimits.replyWindow || self.outboxBytes >= FixedLimits.replyWindowBytes)
    }

}
