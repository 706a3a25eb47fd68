import NIOCore
import RESP

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
final class RESPRequestHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = [RESPRequest]
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

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

    init(limits: RESPRequestParser.Limits, gate: RequestGate) {
        self.parser = RESPRequestParser(limits: limits, authenticated: false)
        self.gate = gate
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        self.gate.onWakeUp { reason in
            eventLoop.execute { loopBound.value.wokenUp(reason) }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.gate.onWakeUp(nil)
        self.gate.leaveAdmission()
        self.buffer = ByteBuffer()
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
        _ = self.parse(context: context)
        if waited && !self.waiting {
            // It waited for its tenant's share and this read found room: it left the queue, and
            // nothing else will resume it.
            self.resumeReading(context: context)
        }
    }

    func read(context: ChannelHandlerContext) {
        if self.waiting {
            // Enough requests wait: the socket is read again once they are answered.
            self.readHeld = true
        } else {
            context.read()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            self.inputClosed = true
            if self.waiting { return }  // passed on once the requests before it are handed over
            self.dropPartialRequest()
            self.inputClosedPassedOn = true
        }
        if let idle = event as? IdleStateHandler.IdleStateEvent, case .read = idle {
            // `timeout`: a client that sent nothing for that long is closed unless it subscribes,
            // as Redis closes it (a pipeliner that stopped reading its replies included).
            // A connection held for its tenant's share is not idle: its requests wait.
            if !self.gate.isSubscribed && self.waitingForAdmission == nil { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func wokenUp(_ reason: RequestGate.WakeUp) {
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
        if !self.waiting { self.resumeReading(context: context) }
    }

    /// It waits no more: the end of input, held back behind the requests, is passed on, and a
    /// held read goes out.
    private func resumeReading(context: ChannelHandlerContext) {
        if self.inputClosed && !self.inputClosedPassedOn {
            self.dropPartialRequest()
            self.inputClosedPassedOn = true
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
        if self.readHeld {
            self.readHeld = false
            context.read()
        }
    }

    /// Hands over every whole request the buffer holds, while the gate allows, in one batch.
    /// - Returns: whether it handed over any.
    @discardableResult
    private func parse(context: ChannelHandlerContext) -> Bool {
        var batch: [RESPRequest] = []
        self.parse(into: &batch)
        guard !batch.isEmpty else { return false }
        context.fireChannelRead(Self.wrapInboundOut(batch))
        return true
    }

    private func parse(into batch: inout [RESPRequest]) {
        // What the tenant's share lets it hand over before it asks again (each read asks once).
        var allowance = 0
        while !self.broken && self.buffer.readableBytes > 0 {
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
            let saved = (parser: self.parser, readerIndex: self.buffer.readerIndex)
            let action = self.parser.next(&self.buffer)
            if case .protocolError = action, self.parser.hitUnauthenticatedLimit, self.gate.outstandingBytes > 0 {
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
            self.gate.handedOver(request.cost)
            if allowance != .max { allowance -= 1 }
            batch.append(request)
        }
        // An idle connection keeps no read buffer: ten thousand of them would hold 64 KiB each.
        if self.buffer.readableBytes == 0 { self.buffer = ByteBuffer() }
    }

    /// A partial request at the end of the input is dropped, as Redis drops it.
    private func dropPartialRequest() {
        self.buffer = ByteBuffer()
    }
}
