import CPOSIX
import NIOCore
import RESP
import Synchronization
import TenantEngine

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A plain connection's socket as ``PlainListener`` accepted it, and how the connection moves to
/// its tenant's event loop.
///
/// **A move.** A connection is accepted on any loop; its tenant lives on one (``TenantPlacement``).
/// Every request of a connection on another loop than its tenant's crosses loops twice (a
/// ``RemoteRun`` there, its replies back), about half the CPU of an unpipelined POST. So once the
/// connection's task has answered everything (``ConnectionOutput/idle(handed:lane:)``) and the
/// lane it hands over names a tenant on another loop, the handler, with nothing unanswered,
/// nothing unwritten and no request half read, takes a second descriptor of the socket, keeps the
/// bytes it has not parsed, and closes its channel (a close(2) of one descriptor: the TCP
/// connection stays open on the other). The task, unwinding, adds what its session holds (user,
/// tenant, protocol, name); then ``ConnectionMover`` sets the socket up again on the tenant's loop,
/// with the same connection id, the session as it was and the unparsed bytes first. The client
/// sees nothing: what it sends meanwhile waits in the kernel.
final class ConnectionSocket: Sendable {
    /// The descriptor the channel owns.
    let descriptor: CInt
    /// The connection's id.
    let id: Int64
    let mover: ConnectionMover
    /// The moves before this one (a connection that keeps changing tenants stops moving).
    let moves: Int
    private let handover = Mutex<Handover?>(nil)

    /// What the handler leaves for the move.
    struct Handover: Sendable {
        let descriptor: CInt
        let loop: any EventLoop
        let unparsed: ByteBuffer
    }

    init(descriptor: CInt, id: Int64, mover: ConnectionMover, moves: Int = 0) {
        self.descriptor = descriptor
        self.id = id
        self.mover = mover
        self.moves = moves
    }

    /// Whether the connection may move now.
    var mayMove: Bool { self.moves < FixedLimits.maxConnectionMoves && self.mover.isAccepting }

    /// On the channel's loop, before its channel closes: a second descriptor of the socket for
    /// the move to `loop`, with the bytes read and not parsed.
    /// - Returns: false when the descriptor could not be duplicated (out of descriptors): the
    ///   connection stays.
    func prepare(to loop: any EventLoop, unparsed: ByteBuffer) -> Bool {
        let second = cposix_dup(self.descriptor)
        guard second >= 0 else { return false }
        // Its place under `maxclients` is kept while it has no channel.
        self.mover.starts(self.id)
        self.handover.withLock { $0 = Handover(descriptor: second, loop: loop, unparsed: unparsed) }
        return true
    }

    /// The handover the handler left, taken (the task takes it once its channel closed).
    func takeHandover() -> Handover? {
        self.handover.withLock { state in
            defer { state = nil }
            return state
        }
    }
}

/// A connection's session carried over a move (``ConnectionSocket``).
struct CarriedSession: Sendable {
    let id: Int64
    let version: RESPVersion
    let principal: Principal
    let tenantID: String?
    /// Leased for the move: the new session takes its own lease, then gives this one back.
    let tenant: Tenant?
    let clientName: String?
    let authFailures: Int
    let transport: ConnectionTransport
    let unparsed: ByteBuffer
    let moves: Int

    /// What `session` holds, with a lease on its tenant; nil when there is nothing to carry (no
    /// principal: the handler never moves such a connection).
    init?(_ session: Session, handover: ConnectionSocket.Handover, moves: Int) {
        guard let principal = session.principal else { return nil }
        self.id = session.id
        self.version = session.version
        self.principal = principal
        self.tenantID = session.tenantID
        session.tenant?.retain()
        self.tenant = session.tenant
        self.clientName = session.clientName
        self.authFailures = session.authFailures
        self.transport = session.transport
        self.unparsed = handover.unparsed
        self.moves = moves
    }

    /// Gives the session's state to `session` (a new connection's).
    func restore(into session: inout Session) {
        session.version = self.version
        session.subscriber.setVersion(self.version)
        session.principal = self.principal
        session.setContext(self.tenant, id: self.tenantID)
        self.tenant?.release()
        session.clientName = self.clientName
        session.authFailures = self.authFailures
    }

    /// The lease taken for a move that did not happen.
    func abandon() {
        self.tenant?.release()
    }
}

/// Sets sockets up as connections on an event loop: those ``PlainListener`` accepted, on the
/// next loop of the group, and those that move, on their tenant's loop.
final class ConnectionMover: Sendable {
    private let setUp: @Sendable (CInt, (any EventLoop)?, CarriedSession?) -> Void
    private let accepting: @Sendable () -> Bool
    /// A connection's move starts (its channel is about to close): it keeps its place.
    let starts: @Sendable (Int64) -> Void
    /// A move that started will not end in a new channel.
    let failed: @Sendable (Int64) -> Void

    /// - Parameters:
    ///   - setUp: makes a connection of a descriptor (its own from then on) on the loop given, or
    ///     the group's next, with the session carried, if any.
    ///   - accepting: whether the server still takes connections (no move during a shutdown).
    ///   - starts: a connection's move starts: its place under `maxclients` is kept.
    ///   - failed: a move that started ended without a new channel: the place is given up.
    init(
        setUp: @escaping @Sendable (CInt, (any EventLoop)?, CarriedSession?) -> Void,
        accepting: @escaping @Sendable () -> Bool,
        starts: @escaping @Sendable (Int64) -> Void,
        failed: @escaping @Sendable (Int64) -> Void
    ) {
        self.setUp = setUp
        self.accepting = accepting
        self.starts = starts
        self.failed = failed
    }

    var isAccepting: Bool { self.accepting() }

    /// A socket just accepted.
    func accepted(_ descriptor: CInt) {
        self.setUp(descriptor, nil, nil)
    }

    /// A connection moving to `handover.loop`.
    func move(_ handover: ConnectionSocket.Handover, session: CarriedSession) {
        self.setUp(handover.descriptor, handover.loop, session)
    }
}
