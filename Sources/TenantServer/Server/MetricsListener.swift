import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The Prometheus endpoint: `GET /metrics` on its own port answers the text exposition format.
///
/// A port it cannot bind is logged and skipped, never fatal: several servers started with
/// `--port 0` on one machine all default to the same metrics port.
///
/// Bounded like a RESP client, since it answers anyone who reaches it: one request answered at a
/// time and the next one not read while a reply waits unsent (a client that pipelines scrapes
/// and reads nothing holds one reply), at most ``maxConnections`` connections, each closed when
/// its next request is not whole ``idleTimeout`` after the accept or the last reply (bytes
/// trickled in do not keep it open), request heads at most NIO's 80 KiB.
public struct MetricsListener: Service {
    /// A connection whose next request is not whole this long after the accept or the last reply
    /// is closed.
    public static let idleTimeout = TimeAmount.seconds(30)

    private let host: String
    private let port: Int
    private let logger: Logger
    private let render: @Sendable () -> [UInt8]
    private let onBound: @Sendable () -> Void

    /// Creates the listener.
    /// - Parameters:
    ///   - host: the address to listen on.
    ///   - port: the port (the contract's default is 9479).
    ///   - logger: where a failed bind is reported.
    ///   - onBound: called once the port is bound (or failed to bind): the server's ready line
    ///     waits for it, so that a harness that read it can scrape at once.
    ///   - render: the metrics in Prometheus text format, made on every scrape.
    public init(
        host: String,
        port: Int,
        logger: Logger,
        onBound: @escaping @Sendable () -> Void = {},
        render: @escaping @Sendable () -> [UInt8]
    ) {
        self.host = host
        self.port = port
        self.logger = logger
        self.onBound = onBound
        self.render = render
    }

    public func run() async throws {
        let render = self.render
        let open = MetricsConnectionCount()
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(
                    .writeBufferWaterMark,
                    value: .init(
                        low: FixedLimits.metricsWriteBufferHighWater / 2,
                        high: FixedLimits.metricsWriteBufferHighWater
                    )
                )
                .childChannelInitializer { channel in
                    guard open.admit() else {
                        return channel.close()
                    }
                    channel.closeFuture.whenComplete { _ in open.leave() }
                    return channel.pipeline.configureHTTPServerPipeline(withPipeliningAssistance: true).flatMap {
                        channel.pipeline.addHandler(MetricsHandler(render: render))
                    }
                }
                .bind(host: self.host, port: self.port)
                .get()
        } catch {
            self.logger.warning("metrics listener not started on \(self.host):\(self.port): \(error)")
            self.onBound()
            try? await gracefulShutdown()
            return
        }
        self.onBound()
        self.logger.info("metrics on http://\(self.host):\(channel.localAddress?.port ?? self.port)/metrics")
        try? await gracefulShutdown()
        try? await channel.close()
    }
}

/// The metrics connections open now, bounded by ``MetricsListener/maxConnections``.
final class MetricsConnectionCount: Sendable {
    private let count = Atomic<Int>(0)

    func admit() -> Bool {
        if self.count.wrappingAdd(1, ordering: .relaxed).newValue > FixedLimits.maxMetricsConnections {
            self.count.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func leave() { self.count.wrappingSubtract(1, ordering: .relaxed) }
}

/// Answers one HTTP request at a time: `/metrics` or 404. NIO's pipelining handler gives it the
/// next request only once the reply before is written, and reads nothing meanwhile; a reply is
/// written only while the connection is writable, so a client that reads nothing holds at most
/// one reply and the write buffer's high-water mark.
final class MetricsHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> [UInt8]
    private let deadline: TimeAmount
    private var path = ""
    private var keepAlive = true
    /// A request read whole whose reply waits for the connection to be writable.
    private var waiting = false
    /// Closes the connection unless the next request is whole by then.
    private var timeout: Scheduled<Void>?

    init(render: @escaping @Sendable () -> [UInt8], deadline: TimeAmount = MetricsListener.idleTimeout) {
        self.render = render
        self.deadline = deadline
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.armTimeout(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.armTimeout(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timeout?.cancel()
        self.timeout = nil
        context.fireChannelInactive()
    }

    private func armTimeout(context: ChannelHandlerContext) {
        self.timeout?.cancel()
        let channel = context.channel
        self.timeout = context.eventLoop.scheduleTask(in: self.deadline) { channel.close(promise: nil) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if self.waiting && context.channel.isWritable {
            self.waiting = false
            self.respond(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            self.keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            // Whole: the deadline is for the next request, from this reply on.
            self.timeout?.cancel()
            self.timeout = nil
            if context.channel.isWritable {
                self.respond(context: context)
            } else {
                // A client that does not read its replies gets as long as for a request.
                self.waiting = true
                self.armTimeout(context: context)
            }
        }
    }

    private func respond(context: ChannelHandlerContext) {
        let found = self.path == "/metrics"
        let body = found ? self.render() : Array("not found; try /metrics\n".utf8)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
        headers.add(name: "Content-Length", value: String(body.count))
        if !self.keepAlive { headers.add(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers)
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let keepAlive = self.keepAlive
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
        if keepAlive { self.armTimeout(context: context) }
    }
}
