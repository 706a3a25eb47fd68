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
        let plain = try await self.bind(port: self.configuration.port, tls: nil, dispatcher: dispatcher)
        let port = plain.channel.localAddress?.port ?? self.configuration.port
        var bound = [plain]
        if let tls = self.configuration.tls {
            let secure = try await self.bind(port: tls.port, tls: tls, dispatcher: dispatcher)
            tls.boundPort.store(secure.channel.localAddress?.port ?? tls.port, ordering: .relaxed)
            bound.append(secure)
        }
        let listeners = bound
        dispatcher.port.store(port, ordering: .relaxed)
        self.onReady(self.configuration.host, port)
        // TENANT MIGRATE reaches other servers over this same protocol.
        await self.registry.setMigrationPeers { host, port, token in
            try await MigrationClient.connect(host: host, port: port, token: token)
        }
        let grace = self.configuration.shutdownGracePeriod
        let connections = self.connections
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                for listener in listeners {
                    group.addTask {
                        try await Self.accept(listener, dispatcher: dispatcher)
                    }
                }
            }
        } onGracefulShutdown: {
            for listener in listeners { listener.channel.close(promise: nil) }
            connections.closeInputs(thenForceAfter: grace)
        }
    }

    /// Runs every connection a listener accepts, each in a task of its own on its event loop.
    private static func accept(
        _ listener: NIOAsyncChannel<AcceptedConnection, Never>,
        dispatcher: CommandDispatcher
    ) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            try await listener.executeThenClose { inbound in
                for try await accepted in inbound {
                    guard case .accepted(let connection, let gate, let pushes, let id, let transport) = accepted else {
                        ServerMetrics.connectionRefused()
                        continue
                    }
                    group.addTask {
                        ServerMetrics.connectionOpened()
                        defer { ServerMetrics.connectionClosed() }
                        let executor = EventLoopTaskExecutor(connection.channel.eventLoop)
                        await withTaskExecutorPreference(executor) {
                            await Connection(
                                id: id,
                                channel: connection,
                                gate: gate,
                                pushes: pushes,
                                transport: transport,
                                dispatcher: dispatcher
                            ).run()
                        }
                    }
                }
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
        let connections = self.connections
        var bootstrap = ServerBootstrap(
            group: self.configuration.eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton
        )
        .serverChannelOption(.backlog, value: 511)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelOption(.allowRemoteHalfClosure, value: true)
        if limits.tcpKeepaliveSeconds > 0 {
            // As Redis's anetKeepAlive: probes after the idle time, then every third of it, three times.
            let idle = Int32(clamping: limits.tcpKeepaliveSeconds)
            bootstrap =
                bootstrap
                .childChannelOption(.socketOption(.so_keepalive), value: 1)
                .childChannelOption(Self.tcpOption(TCP_KEEPIDLE), value: .init(idle))
                .childChannelOption(Self.tcpOption(TCP_KEEPINTVL), value: .init(max(1, idle / 3)))
                .childChannelOption(Self.tcpOption(TCP_KEEPCNT), value: 3)
        }
        return try await bootstrap.bind(host: self.configuration.host, port: port) { channel in
            channel.eventLoop.makeCompletedFuture { () -> AcceptedConnection in
                guard let id = connections.admit(channel, limit: limits.maxClients) else {
                    // `maxclients`: refused as Redis refuses, before any request is read (over TLS,
                    // the client sees the connection closed).
                    try channel.pipeline.syncOperations.addHandler(RefusingHandler(plain: tls == nil))
                    return .refused
                }
                let transport = ConnectionTransport(isTLS: tls != nil)
                if let tls {
                    try channel.pipeline.syncOperations.addTLS(tls, transport: transport, channel: channel)
                }
                let gate = RequestGate(bound: limits.requestWindowBytes)
                if limits.timeoutSeconds > 0 {
                    try channel.pipeline.syncOperations.addHandler(
                        IdleStateHandler(readTimeout: .seconds(Int64(limits.timeoutSeconds)))
                    )
                }
                let pushes = PushSink(eventLoop: channel.eventLoop)
                try channel.pipeline.syncOperations.addHandler(
                    RESPRequestHandler(limits: limits.request, gate: gate, dispatcher: dispatcher, pushes: pushes)
                )
                let wrapped = try NIOAsyncChannel<[RESPRequest], ConnectionOutput>(
                    wrappingChannelSynchronously: channel
                )
                return .accepted(wrapped, gate, pushes, id, transport)
            }
        }
    }
}

extension TenantServer {
    /// The connections' channels open now (for tests).
    var openChannels: [any Channel] { self.connections.openChannels }

    static func tcpOption(_ name: Int32) -> ChannelOptions.Types.SocketOption {
        ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: name))
    }
}

/// What the accept loop gets for a new socket.
enum AcceptedConnection: Sendable {
    case accepted(NIOAsyncChannel<[RESPRequest], ConnectionOutput>, RequestGate, PushSink, Int64, ConnectionTransport)
    /// Over `maxclients`: answered and closed by its ``RefusingHandler``.
    case refused
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
        var shuttingDown = false
    }

    private let state = Mutex(State())

    /// Registers a new socket, unless `limit` sockets are open or the server is shutting down.
    /// - Returns: the connection's id, or nil when it is refused.
    func admit(_ channel: any Channel, limit: Int) -> Int64? {
        let id: Int64? = self.state.withLock { state in
            guard !state.shuttingDown, state.channels.count < limit else { return nil }
            defer { state.next += 1 }
            state.channels[state.next] = channel
            return state.next
        }
        if let id {
            channel.closeFuture.whenComplete { _ in
                _ = self.state.withLock { $0.channels.removeValue(forKey: id) }
            }
        }
        return id
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
