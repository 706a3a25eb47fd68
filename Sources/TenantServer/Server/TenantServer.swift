import Logging
import NIOCore
import NIOPosix
import NIOSSL
import RESP
import ServiceLifecycle
import Synchronization
import TenantEngine

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The TCP front end: RESP and inline commands on one port, one task per connection, and the hot
/// commands of a connection with a tenant run in its channel handler on the tenant's event loop
/// (``RESPRequestHandler``'s lane).
///
/// A graceful shutdown stops accepting, closes every connection's input so it answers what it has
/// read, and returns once they have all finished (or the grace period ran out).
public final class TenantServer: Service {
    private let configuration: ServerConfiguration
    private let registry: TenantRegistry
    private let logger: Logger
    private let onReady: @Sendable (String, Int) -> Void
    private let connections = ConnectionTracker()
    /// Moves connections to their tenant's loop, once the plain listener is up.
    private let mover = Mutex<ConnectionMover?>(nil)

    /// Creates the server.
    /// - Parameters:
    ///   - configuration: where to listen and the request limits.
    ///   - registry: the engine, already bootstrapped.
    ///   - logger: where connection errors are logged.
    ///   - onReady: called with the bound host and port once connections are accepted.
    public init(
        configuration: ServerConfiguration,
        registry: TenantRegistry,
        logger: Logger,
        onReady: @escaping @Sendable (String, Int) -> Void
    ) {
        self.configuration = configuration
        self.registry = registry
        self.logger = logger
        self.onReady = onReady
        _ = ServerStats.shared  // INFO's uptime counts from here
    }

    public func run() async throws {
        let limits = self.configuration.limits
        let dispatcher = CommandDispatcher(
            registry: self.registry,
            logger: self.logger,
            limits: limits,
            tenantDomain: self.configuration.tenantDomain
        )
        // The plain port: accepted by the server itself, so that a connection can move to its
        // tenant's loop (``ConnectionSocket``); TLS connections stay where NIO accepted them.
        let plain = try PlainListener(host: self.configuration.host, port: self.configuration.port)
        defer { plain.stop() }
        let (plainConnections, plainInput) = AsyncStream<AcceptedConnection>.makeStream()
        var secure: NIOAsyncChannel<AcceptedConnection, Never>?
        if let tls = self.configuration.tls {
            let listener = try await self.bind(port: tls.port, tls: tls, dispatcher: dispatcher)
            tls.boundPort.store(listener.channel.localAddress?.port ?? tls.port, ordering: .relaxed)
            secure = listener
        }
        let connections = self.connections
        let mover = ConnectionMover(
            setUp: { [self] descriptor, loop, carried in
                self.setUp(descriptor, on: loop, carried: carried, dispatcher: dispatcher, into: plainInput)
            },
            accepting: { [moves = self.configuration.limits.moveConnections] in moves && connections.isAccepting },
            starts: { id in connections.moveStarts(id: id) },
            failed: { id in connections.moveFailed(id: id) }
        )
        self.mover.withLock { $0 = mover }
        plain.start(logger: self.logger) { descriptor in mover.accepted(descriptor) }
        let port = plain.port
        let tlsListener = secure
        dispatcher.port.store(port, ordering: .relaxed)
        self.onReady(self.configuration.host, port)
        // TENANT MIGRATE reaches other servers over this same protocol.
        await self.registry.setMigrationPeers { host, port, token in
            try await MigrationClient.connect(host: host, port: port, token: token)
        }
        let grace = self.configuration.shutdownGracePeriod
        // The accept loops run on an event loop, not on Swift's shared pool: a connection (a new
        // one, or one that moved) starts even while that pool's threads are all busy.
        let acceptExecutor = EventLoopTaskExecutor(
            (self.configuration.eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton).next()
        )
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask(executorPreference: acceptExecutor) {
                    try await Self.serve(plainConnections, dispatcher: dispatcher)
                }
                if let tlsListener {
                    group.addTask(executorPreference: acceptExecutor) {
                        try await tlsListener.executeThenClose { inbound in
                            try await Self.serve(inbound, dispatcher: dispatcher)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            plain.stop()
            tlsListener?.channel.close(promise: nil)
            connections.closeInputs(thenForceAfter: grace)
            plainInput.finish()
        }
    }

    /// Runs every connection a listener accepts, each in a task of its own on its event loop.
    private static func serve<Connections: AsyncSequence>(
        _ accepted: Connections,
        dispatcher: CommandDispatcher
    ) async throws where Connections.Element == AcceptedConnection {
        try await withThrowingDiscardingTaskGroup { group in
            for try await next in accepted {
                guard case .accepted(let new) = next else {
                    ServerMetrics.connectionRefused()
                    continue
                }
                group.addTask {
                    // A connection that moved was counted where it was accepted, and is counted
                    // closed where it closes.
                    if new.carried == nil { ServerMetrics.connectionOpened() }
                    let executor = EventLoopTaskExecutor(new.channel.channel.eventLoop)
                    let moved = await withTaskExecutorPreference(executor) {
                        await Connection(new, dispatcher: dispatcher).run()
                    }
                    if !moved { ServerMetrics.connectionClosed() }
                }
            }
        }
    }

    /// Makes a connection of a plain socket on `loop` (the group's next when nil), with the
    /// session a move carried, and hands it to the accept loop.
    private func setUp(
        _ descriptor: CInt,
        on loop: (any EventLoop)?,
        carried: CarriedSession?,
        dispatcher: CommandDispatcher,
        into accepted: AsyncStream<AcceptedConnection>.Continuation
    ) {
        let group: any EventLoopGroup =
            loop ?? self.configuration.eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton
        let limits = self.configuration.limits
        var bootstrap = ClientBootstrap(group: group).channelOption(.allowRemoteHalfClosure, value: true)
        // A moved connection's socket has them already.
        if carried == nil {
            for (option, value) in Self.socketOptions(limits) {
                bootstrap = bootstrap.channelOption(option, value: value)
            }
        }
        let made = Mutex<AcceptedConnection?>(nil)
        let mover = self.mover.withLock { $0 }
        let logger = self.logger
        bootstrap.channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let connection = try self.makeConnection(
                    channel,
                    tls: nil,
                    socket: mover.map { (descriptor, $0) },
                    carried: carried,
                    dispatcher: dispatcher
                )
                made.withLock { $0 = connection }
            }
        }
        .withConnectedSocket(descriptor)
        .whenComplete { result in
            let connection = made.withLock { $0 }
            switch result {
            case .success(let channel):
                guard let connection, case .enqueued = accepted.yield(connection) else {
                    // The server stopped taking connections meanwhile.
                    if let carried {
                        carried.abandon()
                        // Counted open where it was accepted, and closed here.
                        ServerMetrics.connectionClosed()
                    }
                    channel.close(promise: nil)
                    return
                }
            case .failure(let error):
                if let carried {
                    carried.abandon()
                    self.connections.moveFailed(id: carried.id)
                    ServerMetrics.connectionClosed()
                }
                logger.debug("a connection could not be set up: \(error)")
            }
        }
    }

    /// Listens on `port`, plain or (with `tls`) TLS: the same protocol, the same limits; a TLS
    /// connection counts against `maxclients` from its accept, before its handshake.
    private func bind(
        port: Int,
        tls: TLSListener?,
        dispatcher: CommandDispatcher
    ) async throws -> NIOAsyncChannel<AcceptedConnection, Never> {
        let limits = self.configuration.limits
        var bootstrap = ServerBootstrap(
            group: self.configuration.eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton
        )
        .serverChannelOption(.backlog, value: 511)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.allowRemoteHalfClosure, value: true)
        for (option, value) in Self.socketOptions(limits) {
            bootstrap = bootstrap.childChannelOption(option, value: value)
        }
        return try await bootstrap.bind(host: self.configuration.host, port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try self.makeConnection(channel, tls: tls, socket: nil, carried: nil, dispatcher: dispatcher)
            }
        }
    }

    /// Sets up a new connection's pipeline, on its loop: the limits, TLS, the request handler
    /// and the task's channel; over `maxclients` (or during a shutdown), the refusal instead.
    private func makeConnection(
        _ channel: any Channel,
        tls: TLSListener?,
        socket plain: (descriptor: CInt, mover: ConnectionMover)?,
        carried: CarriedSession?,
        dispatcher: CommandDispatcher
    ) throws -> AcceptedConnection {
        let limits = self.configuration.limits
        let id: Int64
        if let carried {
            // A connection that moved: counted already, and closed (not refused) in a shutdown.
            guard self.connections.readmit(channel, id: carried.id) else { throw ChannelError.ioOnClosedChannel }
            id = carried.id
        } else if let admitted = self.connections.admit(channel, limit: limits.maxClients) {
            id = admitted
        } else {
            // `maxclients`: refused as Redis refuses, before any request is read (over TLS,
            // the client sees the connection closed).
            try channel.pipeline.syncOperations.addHandler(RefusingHandler(plain: tls == nil))
            return .refused
        }
        let socket = plain.map {
            ConnectionSocket(
                descriptor: $0.descriptor,
                id: id,
                mover: $0.mover,
                moves: carried.map { $0.moves + 1 } ?? 0
            )
        }
        let transport = carried?.transport ?? ConnectionTransport(isTLS: tls != nil)
        if let tls {
            try channel.pipeline.syncOperations.addTLS(tls, transport: transport, channel: channel)
        }
        let gate = RequestGate(bound: limits.requestWindowBytes)
        if carried != nil { gate.authenticated() }
        if limits.timeoutSeconds > 0 {
            try channel.pipeline.syncOperations.addHandler(
                IdleStateHandler(readTimeout: .seconds(Int64(limits.timeoutSeconds)))
            )
        }
        let pushes = PushSink(eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(
            RESPRequestHandler(
                limits: limits.request,
                gate: gate,
                dispatcher: dispatcher,
                pushes: pushes,
                socket: socket,
                carried: carried
            )
        )
        let wrapped = try NIOAsyncChannel<[RESPRequest], ConnectionOutput>(wrappingChannelSynchronously: channel)
        return .accepted(
            NewConnection(
                channel: wrapped,
                gate: gate,
                pushes: pushes,
                id: id,
                transport: transport,
                socket: socket,
                carried: carried
            )
        )
    }
}

extension TenantServer {
    /// The connections' channels open now (for tests).
    var openChannels: [any Channel] { self.connections.openChannels }

    /// The socket options of every connection: no Nagle, and keepalive as Redis's anetKeepAlive
    /// (probes after the idle time, then every third of it, three times).
    static func socketOptions(_ limits: ServerLimits) -> [(ChannelOptions.Types.SocketOption, SocketOptionValue)] {
        var options: [(ChannelOptions.Types.SocketOption, SocketOptionValue)] = [
            (ChannelOptions.socketOption(.tcp_nodelay), 1)
        ]
        if limits.tcpKeepaliveSeconds > 0 {
            let idle = Int32(clamping: limits.tcpKeepaliveSeconds)
            options += [
                (ChannelOptions.socketOption(.so_keepalive), 1),
                (Self.tcpOption(TCP_KEEPIDLE), SocketOptionValue(idle)),
                (Self.tcpOption(TCP_KEEPINTVL), SocketOptionValue(max(1, idle / 3))),
                (Self.tcpOption(TCP_KEEPCNT), 3),
            ]
        }
        return options
    }

    static func tcpOption(_ name: Int32) -> ChannelOptions.Types.SocketOption {
        ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: name))
    }
}

/// What the accept loop gets for a new socket.
enum AcceptedConnection: Sendable {
    case accepted(NewConnection)
    /// Over `maxclients`: answered and closed by its ``RefusingHandler``.
    case refused
}

/// A connection set up and admitted, for its task.
struct NewConnection: Sendable {
    let channel: NIOAsyncChannel<[RESPRequest], ConnectionOutput>
    let gate: RequestGate
    let pushes: PushSink
    let id: Int64
    let transport: ConnectionTransport
    /// Its socket, when it may move to its tenant's loop (plain connections).
    let socket: ConnectionSocket?
    /// The session it had before it moved here.
    let carried: CarriedSession?
}

/// Answers a connection over `maxclients` as Redis does, then closes it.
final class RefusingHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    /// Whether the reply can be written in the clear (over TLS it cannot: the connection is closed).
    let plain: Bool

    init(plain: Bool = true) {
        self.plain = plain
    }

    func channelActive(context: ChannelHandlerContext) {
        guard self.plain else {
            context.close(promise: nil)
            return
        }
        let reply = context.channel.allocator.buffer(string: "-ERR max number of clients reached\r\n")
        context.writeAndFlush(NIOAny(reply)).whenComplete { _ in context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// The open connections, so a shutdown can reach them, and their count for `maxclients`.
///
/// A socket is registered as it is accepted (in its channel initializer, before any request is
/// read) and forgotten when it closes, so a shutdown reaches every connection, even one accepted
/// a moment before it; after the shutdown began, new sockets are refused.
final class ConnectionTracker: Sendable {
    private struct State {
        var next: Int64 = 1
        var channels: [Int64: any Channel] = [:]
        /// Connections between their old channel and their new one (``ConnectionSocket``): they
        /// keep their place under `maxclients`.
        var moving: Set<Int64> = []
        var shuttingDown = false
    }

    private let state = Mutex(State())

    /// Registers a new socket, unless `limit` sockets are open or the server is shutting down.
    /// - Returns: the connection's id, or nil when it is refused.
    func admit(_ channel: any Channel, limit: Int) -> Int64? {
        let id: Int64? = self.state.withLock { state in
            guard !state.shuttingDown, state.channels.count + state.moving.count < limit else { return nil }
            defer { state.next += 1 }
            state.channels[state.next] = channel
            return state.next
        }
        if let id { self.forgetOnClose(channel, id: id) }
        return id
    }

    /// Registers the channel a connection moved to (``ConnectionSocket``) under its id, whatever
    /// the count (it was counted already), unless the server is shutting down.
    /// - Returns: false when it is shutting down.
    func readmit(_ channel: any Channel, id: Int64) -> Bool {
        let admitted = self.state.withLock { state in
            state.moving.remove(id)
            guard !state.shuttingDown else { return false }
            state.channels[id] = channel
            return true
        }
        if admitted { self.forgetOnClose(channel, id: id) }
        return admitted
    }

    /// A connection is about to close its channel to move: its place is kept until ``readmit(_:id:)``
    /// or ``moveFailed(id:)``.
    func moveStarts(id: Int64) {
        _ = self.state.withLock { $0.moving.insert(id) }
    }

    /// A move that started did not end in a new channel: the place is given up.
    func moveFailed(id: Int64) {
        _ = self.state.withLock { $0.moving.remove(id) }
    }

    /// Whether the server still takes connections.
    var isAccepting: Bool { self.state.withLock { !$0.shuttingDown } }

    /// Forgets `channel` when it closes, if its id still names it (a moved connection's id names
    /// its new channel by then).
    private func forgetOnClose(_ channel: any Channel, id: Int64) {
        channel.closeFuture.whenComplete { _ in
            self.state.withLock { state in
                if let held = state.channels[id], held === channel { state.channels.removeValue(forKey: id) }
            }
        }
    }

    /// The channels open now (for tests).
    var openChannels: [any Channel] { self.state.withLock { Array($0.channels.values) } }

    /// Closes every connection's input (it then answers what it read and closes); closes what is
    /// still open after `grace`; refuses new sockets from now on.
    func closeInputs(thenForceAfter grace: Duration) {
        let channels = self.state.withLock { state in
            state.shuttingDown = true
            return Array(state.channels.values)
        }
        let nanoseconds = grace.components.seconds * 1_000_000_000 + grace.components.attoseconds / 1_000_000_000
        for channel in channels {
            channel.close(mode: .input).whenFailure { _ in
                // TLS cannot close only its input: the RESP handler is told instead, from the TLS
                // handler's place, and answers what it read before the channel closes.
                channel.eventLoop.execute {
                    guard let tls = try? channel.pipeline.syncOperations.context(handlerType: NIOSSLServerHandler.self)
                    else {
                        channel.close(promise: nil)
                        return
                    }
                    tls.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
                }
            }
            channel.eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) { channel.close(promise: nil) }
        }
    }
}
