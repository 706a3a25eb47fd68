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
        let configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain,
            privateKey: .privateKey(key)
        )
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

    init(isTLS: Bool) {
        self.isTLS = isTLS
    }

    /// The server name (lowercased), once the ClientHello was read; nil for none.
    var serverName: String? { self.name.withLock { $0 } }

    func setServerName(_ name: String?) {
        self.name.withLock { $0 = name?.lowercased() }
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// Reads the ClientHello's server name, then puts the TLS handler in its place: every byte
    /// after it is decrypted before the RESP handler sees it.
    func addTLS(_ listener: TLSListener, transport: ConnectionTransport, channel: any Channel) throws {
        let sni = ByteToMessageHandler(
            SNIHandler { result in
                if case .hostname(let name) = result { transport.setServerName(name) }
                do {
                    let handler = NIOSSLServerHandler(context: listener.current)
                    let sniContext = try channel.pipeline.syncOperations.context(
                        handlerType: ByteToMessageHandler<SNIHandler>.self
                    )
                    try channel.pipeline.syncOperations.addHandler(handler, position: .after(sniContext.handler))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        )
        try self.addHandler(sni)
    }
}
