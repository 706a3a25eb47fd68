import NIOCore
import NIOPosix
import RESP

/// The settings of the TCP front end.
public struct ServerConfiguration: Sendable {
    /// The address to listen on.
    public var host: String
    /// The port; 0 picks a free one.
    public var port: Int
    /// What one client may make the server hold or do.
    public var limits: ServerLimits
    /// How long a graceful shutdown waits for connections to finish what they read.
    public var shutdownGracePeriod: Duration
    /// The TLS listener (`--tls-port`), if any.
    public var tls: TLSListener?
    /// `TENANT_DOMAIN`: a TLS server name `<label>.<domain>` names the tenant whose subdomain is
    /// `<label>` (lowercased; nil: off).
    public var tenantDomain: String?
    /// The event loops the listeners accept on; nil: NIO's singleton group (`--threads` sizes it
    /// before its first use, so it is not touched here).
    public var eventLoopGroup: (any EventLoopGroup)?

    /// Creates a configuration with the contract's defaults.
    public init(host: String = "127.0.0.1", port: Int = 7379) {
        self.host = host
        self.port = port
        self.limits = ServerLimits()
        self.shutdownGracePeriod = .seconds(5)
    }
}

/// The contract's limits, by Redis's names and with Redis's defaults.
public struct ServerLimits: Sendable, Hashable {
    /// `maxclients`: connections past it are refused with `-ERR max number of clients reached`.
    public var maxClients: Int
    /// `timeout`: seconds after which an idle client is closed; 0 never.
    public var timeoutSeconds: Int
    /// `tcp-keepalive`: seconds between TCP keepalive probes of an idle connection; 0 off.
    public var tcpKeepaliveSeconds: Int
    /// The parser's bounds: `proto-max-bulk-len`, `client-query-buffer-limit`, inline lines and
    /// the unauthenticated rule.
    public var request: RESPRequestParser.Limits
    /// `max-subscriptions`: the most rooms one connection subscribes to.
    public var maxSubscriptions: Int
    /// `client-output-buffer-limit-pubsub`.
    public var pubSub: PubSubLimit
    /// `client-output-buffer-limit normal`: Redis's default, `0 0 0`, is none (the reply window
    /// bounds a normal client anyway).
    public var normal: PubSubLimit
    /// `maxmemory-clients`: the most reply bytes all connections together hold unsent before
    /// the biggest holders are closed; 0 = no bound.
    public var maxMemoryClients: Int
    /// Bytes of parsed requests a connection may hold before it stops reading its client.
    public var requestWindowBytes: Int
    /// The requests in flight that the active tenants share: while more than one tenant is
    /// active, each may have at most this divided by their number (``TenantAdmission``); 0 = off,
    /// the default (docs/benchmarks.md has what it costs and what it buys).
    public var fairShareWindow: Int
    /// The least a tenant may always have in flight, however many are active.
    public var fairShareMinimum: Int
    /// The lane requests an event loop runs in one turn while several tenants are active on it,
    /// shared between them (each at least 16; ``LoopTurn``); a tenant alone is not held back.
    /// 0 = no turn shares, the default (docs/benchmarks.md, "Turn shares").
    public var turnBudget: Int
    /// Whether a plain connection moves to its tenant's event loop once it has one (``ConnectionSocket``).
    public var moveConnections: Bool

    /// `maxmemory-clients` unless told: 256 MiB, 64 connections' full reply windows.
    public static let defaultMaxMemoryClients = 256 << 20

    /// Creates the contract's defaults.
    public init() {
        self.maxClients = 10_000
        self.timeoutSeconds = 0
        self.tcpKeepaliveSeconds = 300
        self.request = RESPRequestParser.Limits()
        self.maxSubscriptions = 10_000
        self.pubSub = PubSubLimit()
        self.maxMemoryClients = Self.defaultMaxMemoryClients
        self.normal = .none
        self.requestWindowBytes = 1 << 20
        self.fairShareWindow = 0
        self.fairShareMinimum = 8
        self.turnBudget = LoopTurn.defaultTurnBudget
        self.moveConnections = true
    }
}
