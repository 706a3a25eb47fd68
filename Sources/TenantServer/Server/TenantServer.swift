import Logging
import NIOCore
import NIOPosix
import RESP
import ServiceLifecycle
import Synchronization
import TenantEngine

/// The TCP front end: RESP and inline commands on one port, one task per connection.
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
    }

    public func run() async throws {
        let limits = self.configuration.requestLimits
        let serverChannel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: self.configuration.host, port: self.configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(RESPRequestDecoder(limits: limits))
                    )
                    return try NIOAsyncChannel<RESPRequest, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let port = serverChannel.channel.localAddress?.port ?? self.configuration.port
        self.onReady(self.configuration.host, port)
        let dispatcher = CommandDispatcher(registry: self.registry, logger: self.logger)
        let connections = self.connections
        let grace = self.configuration.shutdownGracePeriod
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await serverChannel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask {
                            let id = connections.add(connection.channel)
                            ServerMetrics.connectionOpened()
                            defer {
                                connections.remove(id)
                                ServerMetrics.connectionClosed()
                            }
                            await Connection(id: id, channel: connection, dispatcher: dispatcher).run()
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            serverChannel.channel.close(promise: nil)
            connections.closeInputs(thenForceAfter: grace)
        }
    }
}

/// The open connections, so a shutdown can reach them.
final class ConnectionTracker: Sendable {
    private let state = Mutex<(next: Int64, channels: [Int64: any Channel])>((1, [:]))

    func add(_ channel: any Channel) -> Int64 {
        self.state.withLock { state in
            defer { state.next += 1 }
            state.channels[state.next] = channel
            return state.next
        }
    }

    func remove(_ id: Int64) {
        _ = self.state.withLock { $0.channels.removeValue(forKey: id) }
    }

    /// Closes every connection's input (it then answers what it read and closes); closes what is
    /// still open after `grace`.
    func closeInputs(thenForceAfter grace: Duration) {
        let channels = self.state.withLock { Array($0.channels.values) }
        for channel in channels {
            channel.close(mode: .input).whenFailure { _ in channel.close(promise: nil) }
        }
        let seconds = grace.components.seconds
        for channel in channels {
            channel.eventLoop.scheduleTask(in: .seconds(seconds)) { channel.close(promise: nil) }
        }
    }
}
