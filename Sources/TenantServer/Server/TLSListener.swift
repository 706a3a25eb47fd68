import Logging
import NIOCore
import NIOSSL
import NIOTLS
import Synchronization

/// The TLS listener's settings and its certificate, which a SIGHUP reloads: connections made after
/// the reload get the new certificate; those open keep theirs.
public final class TLSListener: Sendable {
    /// The port to listen on; 0 picks a free one.
    public let port: Int
    public let certificateFile: String
    public let keyFile: String
    /// The port bound, once it is (for the ready line).
    public let boundPort = Atomic<Int>(0)
    private let context: Mutex<NIOSSLContext>

    /// Reads the certificate chain and the key (PEM).
    /// - Throws: when either cannot be read or they do not make a TLS context.
    public init(port: Int, certificateFile: String, keyFile: String) throws {
        self.port = port
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.context = Mutex(try Self.makeContext(certificateFile: certificateFile, keyFile: keyFile))
    }

    /// Reads the files again; on failure the certificate in use stays.
    public func reload() throws {
        let fresh = try Self.makeContext(certificateFile: self.certificateFile, keyFile: self.keyFile)
        self.context.withLock { $0 = fresh }
    }

    /// The context new connections use.
    var current: NIOSSLContext { self.context.withLock { $0 } }

    private static func makeContext(certificateFile: String, keyFile: String) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { NIOSSLCertificateSource.certificate($0) }
        guard !chain.isEmpty else { throw TLSSetupError("no certificate in \(certificateFile)") }
        let key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain,
            privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = .tlsv12
        return try NIOSSLContext(configuration: configuration)
    }
}

struct TLSSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// What a connection knows of its transport before its first request: the server name a TLS
/// client asked for (SNI), which names the tenant under `TENANT_DOMAIN`.
final class ConnectionTransport: Sendable {
    let isTLS: Bool
    private let name = Mutex<String?>(nil)
    /// Set once the TLS handshake completed.
    let handshakeDone = Atomic<Bool>(false)

    init(isTLS: Bool) {
        self.isTLS = isTLS
    }

    /// The server name (lowercased, without a trailing dot), once the ClientHello was read; nil for none.
    var serverName: String? { self.name.withLock { $0 } }

    func setServerName(_ name: String?) {
        var name = name?.lowercased()
        if name?.hasSuffix(".") == true { name?.removeLast() }
        self.name.withLock { $0 = name }
    }
}

/// Stands between the SNI reader and the RESP handler until the TLS handler takes its place: any
/// bytes or end of input reaching it (the SNI reader hands its raw buffer on at the end of input,
/// never decrypted) close the connection. Nothing in the clear is ever read as a request.
final class PlaintextGuard: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Marks the handshake done, for the handshake deadline.
final class HandshakeWatcher: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    let transport: ConnectionTransport

    init(transport: ConnectionTransport) {
        self.transport = transport
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.handshakeCompleted) = event as? TLSUserEvent {
            self.transport.handshakeDone.store(true, ordering: .relaxed)
        }
        context.fireUserInboundEventTriggered(event)
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// How long a TLS client has from its accept to a completed handshake.
    static var handshakeDeadline: TimeAmount { .seconds(10) }

    /// Reads the ClientHello's server name, then puts the TLS handler in the guard's place: every
    /// byte after it is decrypted before the RESP handler sees it. A client that has not completed
    /// its handshake within ``handshakeDeadline`` is closed.
    func addTLS(_ listener: TLSListener, transport: ConnectionTransport, channel: any Channel) throws {
        let guardHandler = PlaintextGuard()
        let sni = ByteToMessageHandler(
            SNIHandler { result in
                if case .hostname(let name) = result { transport.setServerName(name) }
                do {
                    let operations = channel.pipeline.syncOperations
                    let sniContext = try operations.context(handlerType: ByteToMessageHandler<SNIHandler>.self)
                    try operations.addHandler(
                        NIOSSLServerHandler(context: listener.current),
                        position: .after(sniContext.handler)
                    )
                    try operations.addHandler(HandshakeWatcher(transport: transport), position: .before(guardHandler))
                    operations.removeHandler(guardHandler, promise: nil)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        )
        try self.addHandler(sni)
        try self.addHandler(guardHandler)
        channel.eventLoop.scheduleTask(in: Self.handshakeDeadline) {
            if !transport.handshakeDone.load(ordering: .relaxed) { channel.close(promise: nil) }
        }
    }
}
