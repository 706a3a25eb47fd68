import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The Prometheus endpoint: `GET /metrics` on its own port answers the text exposition format.
///
/// A port it cannot bind is logged and skipped, never fatal: several servers started with
/// `--port 0` on one machine all default to the same metrics port.
public struct MetricsListener: Service {
    private let host: String
    private let port: Int
    private let logger: Logger
    private let render: @Sendable () -> [UInt8]

    /// Creates the listener.
    /// - Parameters:
    ///   - host: the address to listen on.
    ///   - port: the port (the contract's default is 9479).
    ///   - logger: where a failed bind is reported.
    ///   - render: the metrics in Prometheus text format, made on every scrape.
    public init(host: String, port: Int, logger: Logger, render: @escaping @Sendable () -> [UInt8]) {
        self.host = host
        self.port = port
        self.logger = logger
        self.render = render
    }

    public func run() async throws {
        let render = self.render
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.pipeline.configureHTTPServerPipeline().flatMap {
                        channel.pipeline.addHandler(MetricsHandler(render: render))
                    }
                }
                .bind(host: self.host, port: self.port)
                .get()
        } catch {
            self.logger.warning("metrics listener not started on \(self.host):\(self.port): \(error)")
            try? await gracefulShutdown()
            return
        }
        self.logger.info("metrics on http://\(self.host):\(channel.localAddress?.port ?? self.port)/metrics")
        try? await gracefulShutdown()
        try? await channel.close()
    }
}

/// Answers one HTTP request at a time: `/metrics` or 404.
private final class MetricsHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> [UInt8]
    private var path = ""
    private var keepAlive = true

    init(render: @escaping @Sendable () -> [UInt8]) {
        self.render = render
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            self.keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
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
        }
    }
}
