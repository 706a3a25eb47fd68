import NIOCore
import RESP
import TenantEngine

/// A connection's run of hot commands for tenants on another event loop (its context, or those
/// path-form rooms name): sent there in one hop, run on that loop as its own connections' are
/// (``CommandDispatcher/runHot(_:_:lane:target:)``, the POSTs written at the end of that loop's
/// turn), and its replies, encoded in request order, sent back in one hop. One hop each way per
/// batch, not a task's hop per request.
///
/// `@unchecked Sendable`: created on the connection's loop, then touched only on `loop` until
/// `deliver` runs, which hands back only the encoded bytes.
final class RemoteRun: LoopTurn.Waiter, @unchecked Sendable {
    struct Request {
        let spec: CommandSpec
        let words: [ByteBuffer]
        let wireBytes: Int
        /// The tenant it works in, placed on the run's loop.
        let target: LaneTarget
    }

    private enum Piece {
        case bytes(ByteBuffer)
        case post(Tenant, PostTicket)
    }

    private let requests: [Request]
    private let loop: any EventLoop
    private let lane: SyncLane
    private let dispatcher: CommandDispatcher
    private let deliver: @Sendable (ByteBuffer, [Request]) -> Void
    /// The requests it did not run: its replies reached the bound first.
    private var leftover: [Request] = []
    private var pieces: [Piece] = []
    private var waiting = 0
    /// The replies went back: a later log's report changes nothing (a run with POSTs to several
    /// tenants hears from each, and its POSTs may all be answered before the last report).
    private var finished = false
    /// The failed writes of its tenants' logs: the POSTs up to `upTo` get `error`.
    private var failures: [ObjectIdentifier: (upTo: UInt64, error: TenantError)] = [:]
    var turnMark: UInt64 = 0
    var turnTenants: [ObjectIdentifier] = []
    var flushMark: UInt64 = 0

    /// - Parameters:
    ///   - loop: where every request's tenant is placed.
    ///   - deliver: called on `loop`, once, with the replies' bytes and the requests left unrun.
    init(
        _ requests: [Request],
        on loop: any EventLoop,
        lane: SyncLane,
        dispatcher: CommandDispatcher,
        deliver: @escaping @Sendable (ByteBuffer, [Request]) -> Void
    ) {
        self.requests = requests
        self.loop = loop
        self.lane = lane
        self.dispatcher = dispatcher
        self.deliver = deliver
    }

    /// Runs the requests; on `loop`.
    func run() {
        self.loop.assertInEventLoop()
        var bytes = ByteBuffer()
        var replied = 0
        var clock: UInt64 = 0
        for (index, request) in self.requests.enumerated() {
            if replied + bytes.readableBytes >= FixedLimits.remoteRunReplyBytes {
                self.leftover = Array(self.requests[index...])
                break
            }
            let tenant = request.target.tenant
            ServerStats.shared.received(request.wireBytes)
            tenant.counters.requested(bytes: request.wireBytes)
            let outcome =
                self.dispatcher.runHot(
                    request.spec,
                    request.words,
                    lane: self.lane,
                    target: request.target,
                    clock: &clock
                )
                ?? .reply(.reply(for: CommandError("internal error: the command left the lane")))
            switch outcome {
            case .reply(let value):
                let start = bytes.writerIndex
                RESPEncoder.encode(value, version: self.lane.version, into: &bytes)
                Self.counted(bytes.writerIndex - start, in: tenant)
            case .post(let ticket):
                replied += bytes.readableBytes
                if bytes.readableBytes > 0 { self.pieces.append(.bytes(bytes)) }
                bytes = ByteBuffer()
                self.pieces.append(.post(tenant, ticket))
                self.waiting += 1
                LoopTurn.of(self.loop).appended(to: tenant, by: self)
            case .delivered:
                // Only for a tenant on the connection's own loop (``CommandSpec/runsHereOnly``).
                preconditionFailure("a command that delivers its replies ran in a remote run")
            }
        }
        if bytes.readableBytes > 0 { self.pieces.append(.bytes(bytes)) }
        if self.waiting == 0 { self.finish() }
    }

    private static func counted(_ size: Int, in tenant: Tenant) {
        ServerStats.shared.sent(size)
        tenant.counters.replied(bytes: size)
    }

    /// A POST's outcome: its tenant's, or the failure of the write that covered it.
    private func outcome(_ tenant: Tenant, _ ticket: PostTicket) -> Result<UInt64, TenantError>? {
        if let outcome = tenant.outcomeOnLoop(of: ticket) { return outcome }
        if let failure = self.failures[ObjectIdentifier(tenant)], ticket.lsn <= failure.upTo {
            return .failure(failure.error)
        }
        return nil
    }

    func logWritten(_ tenant: Tenant, upTo: UInt64, error: TenantError?) {
        guard !self.finished else { return }
        if let error { self.failures[ObjectIdentifier(tenant)] = (upTo, error) }
        // Every POST answered (durable, or failed), or wait for the next write.
        for piece in self.pieces {
            guard case .post(let tenant, let ticket) = piece else { continue }
            if self.outcome(tenant, ticket) == nil { return }
        }
        self.finish()
    }

    func turnEnded() {}
    func shareResumed() {}

    /// Encodes every reply in request order and sends them back.
    private func finish() {
        guard !self.finished else { return }
        self.finished = true
        var out = ByteBuffer()
        for piece in self.pieces {
            switch piece {
            case .bytes(let bytes):
                out.writeImmutableBuffer(bytes)
            case .post(let tenant, let ticket):
                let value: RESPValue
                switch self.outcome(tenant, ticket) {
                case .success(let seq): value = .integer(Int64(seq))
                case .failure(let error): value = .reply(for: error)
                case nil: value = .reply(for: TenantError(.storageFailed, "not written"))
                }
                let start = out.writerIndex
                RESPEncoder.encode(value, version: self.lane.version, into: &out)
                Self.counted(out.writerIndex - start, in: tenant)
            }
        }
        self.pieces = []
        self.deliver(out, self.leftover)
    }
}
