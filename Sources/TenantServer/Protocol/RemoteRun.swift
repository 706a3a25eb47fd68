import NIOCore
import RESP
import TenantEngine

/// A connection's run of hot commands for a tenant on another event loop: sent there in one hop,
/// run on the tenant's loop as its own connections' are (``CommandDispatcher/runHot(_:_:lane:)``,
/// the POSTs written at the end of that loop's turn), and its replies, encoded in request order,
/// sent back in one hop. One hop each way per batch, not a task's hop per request.
///
/// `@unchecked Sendable`: created on the connection's loop, then touched only on the tenant's
/// loop until `deliver` runs, which hands back only the encoded bytes.
final class RemoteRun: LoopTurn.Waiter, @unchecked Sendable {
    struct Request {
        let spec: CommandSpec
        let words: [ByteBuffer]
        let wireBytes: Int
    }

    private enum Piece {
        case bytes(ByteBuffer)
        case post(PostTicket)
    }

    private let requests: [Request]
    private let lane: SyncLane
    private let dispatcher: CommandDispatcher
    private let deliver: @Sendable (ByteBuffer, [Request]) -> Void
    /// The requests it did not run: its replies reached the bound first.
    private var leftover: [Request] = []
    /// The reply bytes after which a run stops, so that a client that does not read is sent no
    /// more than this past its window (a HISTORY reply can be megabytes).
    static let replyBound = 64 << 10
    private var pieces: [Piece] = []
    private var waiting = 0
    private var failure: (upTo: UInt64, error: TenantError)?
    var turnMark: UInt64 = 0
    var flushMark: UInt64 = 0

    /// - Parameter deliver: called on the tenant's loop, once, with the replies' bytes and the
    ///   requests left unrun.
    init(
        _ requests: [Request],
        lane: SyncLane,
        dispatcher: CommandDispatcher,
        deliver: @escaping @Sendable (ByteBuffer, [Request]) -> Void
    ) {
        self.requests = requests
        self.lane = lane
        self.dispatcher = dispatcher
        self.deliver = deliver
    }

    /// Runs the requests; on the tenant's loop.
    func run() {
        self.lane.loop.assertInEventLoop()
        var bytes = ByteBuffer()
        var replied = 0
        for (index, request) in self.requests.enumerated() {
            if replied + bytes.readableBytes >= Self.replyBound {
                self.leftover = Array(self.requests[index...])
                break
            }
            ServerStats.shared.received(request.wireBytes)
            self.lane.tenant.counters.requested(bytes: request.wireBytes)
            let outcome =
                self.dispatcher.runHot(request.spec, request.words, lane: self.lane)
                ?? .reply(.reply(for: CommandError("internal error: the command left the lane")))
            switch outcome {
            case .reply(let value):
                let start = bytes.writerIndex
                RESPEncoder.encode(value, version: self.lane.version, into: &bytes)
                self.counted(bytes.writerIndex - start)
            case .post(let ticket):
                replied += bytes.readableBytes
                if bytes.readableBytes > 0 { self.pieces.append(.bytes(bytes)) }
                bytes = ByteBuffer()
                self.pieces.append(.post(ticket))
                self.waiting += 1
            }
        }
        if bytes.readableBytes > 0 { self.pieces.append(.bytes(bytes)) }
        if self.waiting > 0 {
            LoopTurn.of(self.lane.loop).appended(to: self.lane.tenant, by: self)
        } else {
            self.finish()
        }
    }

    private func counted(_ size: Int) {
        ServerStats.shared.sent(size)
        self.lane.tenant.counters.replied(bytes: size)
    }

    func logWritten(_ tenant: Tenant, upTo: UInt64, error: TenantError?) {
        if let error { self.failure = (upTo, error) }
        // Every POST answered (durable, or failed), or wait for the next write.
        for piece in self.pieces {
            guard case .post(let ticket) = piece else { continue }
            if tenant.outcomeOnLoop(of: ticket) == nil,
                self.failure.map({ ticket.lsn > $0.upTo }) ?? true
            {
                return
            }
        }
        self.finish()
    }

    func turnEnded() {}
    func shareResumed() {}

    /// Encodes every reply in request order and sends them back.
    private func finish() {
        var out = ByteBuffer()
        for piece in self.pieces {
            switch piece {
            case .bytes(let bytes):
                out.writeImmutableBuffer(bytes)
            case .post(let ticket):
                let value: RESPValue
                switch self.lane.tenant.outcomeOnLoop(of: ticket) {
                case .success(let seq): value = .integer(Int64(seq))
                case .failure(let error): value = .reply(for: error)
                case nil: value = .reply(for: self.failure?.error ?? TenantError(.storageFailed, "not written"))
                }
                let start = out.writerIndex
                RESPEncoder.encode(value, version: self.lane.version, into: &out)
                self.counted(out.writerIndex - start)
            }
        }
        self.pieces = []
        self.deliver(out, self.leftover)
    }
}
