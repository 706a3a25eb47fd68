import DequeModule
import NIOCore
import RESP
import Synchronization
import TenantEngine

/// The handler's parse: requests taken from the read buffer between the turn's, the share's
/// and the gate's checks, each routed to the lane or handed to the connection's task.
extension RESPRequestHandler {
    /// Hands over every whole request the buffer holds, while the gate allows, in one batch.
    /// - Returns: whether it handed over any.
    @discardableResult
    func parse(context: ChannelHandlerContext) -> Bool {
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

    func parse(into batch: inout [RESPRequest], context: ChannelHandlerContext) {
        if let request = self.held {
            self.held = nil
            guard self.route(request, into: &batch) else { return }
        }
        // What the tenant's share lets it hand over before it asks again (each read asks once).
        var allowance = 0
        while !self.broken && self.buffer.readableBytes > 0 {
            if !self.parser.isInsideRequest {
                guard !self.pausesBetweenRequests(context: context) else { return }
                if allowance == 0 {
                    guard let granted = self.admitted() else { return }
                    allowance = granted
                }
            }
            switch self.nextRequest() {
            case .needMoreData:
                self.buffer.discardReadBytes()
                return
            case .waiting:
                return
            case .judgedAgain:
                continue
            case .request(let request):
                if allowance != .max { allowance -= 1 }
                guard self.route(request, into: &batch) else { return }
            }
        }
        // An idle connection keeps no read buffer: ten thousand of them would hold 64 KiB each.
        if self.buffer.readableBytes == 0 { self.buffer = ByteBuffer() }
    }

    /// Between two requests: whether parsing stops here for now (the lane is full, the tenant ran
    /// its share of the turn, the turn's bound is reached, or the gate holds the connection).
    @inline(__always)
    func pausesBetweenRequests(context: ChannelHandlerContext) -> Bool {
        if self.laneIsFull(context: context) {
            self.waitForLane(holding: nil)
            return true
        }
        if let turn = self.turn, turn.share != Int.max, let account = self.localAccount(), turn.isOverShare(account) {
            // Its tenant ran its share of this turn while other tenants are active on the
            // loop: the rest waits for a later turn, behind the tenant's other held
            // connections.
            self.waitForLane(holding: nil)
            if !self.heldForShare {
                self.heldForShare = true
                turn.hold(self, for: account, afterRunning: self.ranInTurn == turn.current)
            }
            return true
        }
        if self.ranThisTurn >= FixedLimits.requestsPerTurn {
            // Bounded turns: the loop's other connections (and the end of this turn, which
            // answers these POSTs) go first; the rest of the read is parsed after them. A
            // task, not ``AfterPoll``: a tenant alone runs its pipelines without a wake-up
            // each 64 requests; while several are active, the turn shares hold it and its
            // held connections resume after the next poll.
            self.ranThisTurn = 0
            self.waitForLane(holding: nil)
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { handler.value.resumeLane() }
            return true
        }
        if !self.gate.mayParse && self.gate.waitForWakeUp() {
            self.waiting = true
            self.waitingForAdmission = nil
            return true
        }
        return false
    }

    /// Asks the tenant's share for room to hand requests over.
    /// - Returns: how many it may hand over, or nil when it waits (the tenant is at its share
    ///   while other tenants are active).
    @inline(__always)
    func admitted() -> Int? {
        switch self.gate.waitForAdmission() {
        case .go(let granted):
            if let stale = self.waitingForAdmission, stale.remove(self.gate) {
                // Still queued, no wake-up on its way: it takes this room and waits no more.
                self.waitingForAdmission = nil
                self.waiting = false
            }
            return granted
        case .wait(let account):
            self.waiting = true
            self.waitingForAdmission = account
            return nil
        }
    }

    enum Parsed {
        case request(RESPRequest)
        case needMoreData
        /// Over an anonymous client's limit behind an AUTH not yet answered: judged again once
        /// every request before it is.
        case waiting
        case judgedAgain
    }

    /// The next request of the buffer.
    @inline(__always)
    func nextRequest() -> Parsed {
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
                return .waiting
            }
            return .judgedAgain
        }
        self.gate.requireIdle = false
        switch action {
        case .needMoreData:
            return .needMoreData
        case .command(let words):
            return .request(.command(words))
        case .tooBig(let message):
            return .request(.tooBig(message))
        case .protocolError(let message):
            self.broken = true
            self.buffer = ByteBuffer()
            return .request(.protocolError(message))
        }
    }

    /// A partial request at the end of the input is dropped, as Redis drops it.
    func dropPartialRequest() {
        self.buffer = ByteBuffer()
    }
}
