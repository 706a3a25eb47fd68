import RESP

/// The settings of the TCP front end.
public struct ServerConfiguration: Sendable {
    /// The address to listen on.
    public var host: String
    /// The port; 0 picks a free one.
    public var port: Int
    /// The parser's bounds on requests.
    public var requestLimits: RESPRequestParser.Limits
    /// How long a graceful shutdown waits for connections to finish what they read.
    public var shutdownGracePeriod: Duration

    /// Creates a configuration with the contract's defaults.
    public init(host: String = "127.0.0.1", port: Int = 7379) {
        self.host = host
        self.port = port
        self.requestLimits = RESPRequestParser.Limits()
        self.shutdownGracePeriod = .seconds(5)
    }
}
