import ArgumentParser
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Synchronization
import TenantEngine
import TenantMetrics
import TenantServer
import UnixSignals
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tenantd`: the server. Every flag can also come from the environment; a flag wins.
@main
struct TenantdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenantd",
        abstract: "A multi-tenant chat message engine speaking RESP."
    )

    @Option(help: "Address to listen on (TENANTD_HOST). Default 127.0.0.1.")
    var host: String?

    @Option(help: "Port to listen on; 0 picks a free one (TENANTD_PORT). Default 7379.")
    var port: Int?

    @Option(help: "Data directory (TENANTD_DATA_DIR). Default ./data.")
    var dataDir: String?

    @Option(help: "always | everysec | no (TENANTD_FSYNC). Default everysec.")
    var fsync: String?

    @Option(help: "Prometheus /metrics port, 0 = off (TENANTD_METRICS_PORT). Default 9479.")
    var metricsPort: Int?

    @Option(
        help: """
            Address /metrics listens on (TENANTD_METRICS_HOST). Default 127.0.0.1, whatever --host \
            says: the endpoint needs no authentication, so exposing it is the operator's choice.
            """
    )
    var metricsHost: String?

    @Option(
        help: """
            Most tenants with /metrics series of their own, the busiest by requests; the rest are \
            summed under tenant_id="_other" (TENANTD_METRICS_TENANTS). Default 1000.
            """
    )
    var metricsTenants: Int?

    @Option(
        help: """
            Where scheduled tenant backups go, as <dir>/<tenant-id>/<UTC timestamp>/, for tenants with \
            settings.backup_interval (TENANTD_BACKUP_DIR). Default: none.
            """
    )
    var backupDir: String?

    @Option(
        name: .customLong("region"),
        help: """
            A named data root for data residency, NAME=DIR; repeat for more (TENANT_REGIONS=eu=/srv/eu,us=/srv/us). \
            TENANT CREATE ... REGION NAME places a tenant there.
            """
    )
    var regions: [String] = []

    @Option(help: "Port of the TLS listener, 0 picks a free one (TENANTD_TLS_PORT). Default: no TLS listener.")
    var tlsPort: Int?

    @Option(help: "PEM certificate chain of the TLS listener (TENANTD_TLS_CERT_FILE); SIGHUP reloads it.")
    var tlsCertFile: String?

    @Option(help: "PEM private key of the TLS listener (TENANTD_TLS_KEY_FILE); SIGHUP reloads it.")
    var tlsKeyFile: String?

    @Option(help: "Operator token (TENANT_ADMIN_TOKEN). Default: <data>/admin.token, made on first start.")
    var adminToken: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (TENANTD_LOG_LEVEL).")
    var logLevel: String?

    @Option(
        name: .customLong("maxclients"),
        help: "Most connections; past it: -ERR max number of clients reached (TENANTD_MAXCLIENTS). Default 10000."
    )
    var maxClients: Int?

    @Option(
        help: """
            Memory budget; past its share for messages, older messages move to disk and are read back \
            on demand; 0 = no limit (TENANTD_MAXMEMORY). Default: half the machine's memory.
            """
    )
    var maxmemory: String?

    @Option(
        help: """
            Requests in flight that the active tenants share: while several are active, each may have \
            this divided by their number (at least 8), 0 = no shares (TENANTD_FAIR_SHARE). Default 0.
            """
    )
    var fairShare: Int?

    @Option(
        help: """
            Lane requests an event loop runs in one turn while several tenants are active on it, \
            shared between them (each at least 16); a tenant alone is never held back. 0 = off \
            (TENANTD_TURN_BUDGET). Default 64.
            """
    )
    var turnBudget: Int?

    @Option(
        help: """
            Move a plain connection to its tenant's event loop once AUTH or USE gives it one: yes \
            or no (TENANTD_MOVE_CONNECTIONS). Default yes.
            """
    )
    var moveConnections: String?

    @Option(help: "Close a client idle this many seconds, 0 = never (TENANTD_TIMEOUT). Default 0.")
    var timeout: Int?

    @Option(help: "TCP keepalive period in seconds, 0 = off (TENANTD_TCP_KEEPALIVE). Default 300.")
    var tcpKeepalive: Int?

    @Option(help: "Longest argument after AUTH; longer: -TOOBIG (TENANTD_PROTO_MAX_BULK_LEN). Default 1mb.")
    var protoMaxBulkLen: String?

    @Option(
        help: "Most bytes of one request; past it: -PROTO, closed (TENANTD_CLIENT_QUERY_BUFFER_LIMIT). Default 16mb."
    )
    var clientQueryBufferLimit: String?

    @Option(help: "Most rooms one connection subscribes to (TENANTD_MAX_SUBSCRIPTIONS). Default 10000.")
    var maxSubscriptions: Int?

    @Option(
        help: """
            "<hard> <soft> <seconds>": a subscriber with more unsent pushes is disconnected \
            (TENANTD_CLIENT_OUTPUT_BUFFER_LIMIT_PUBSUB). Default "32mb 8mb 60".
            """
    )
    var clientOutputBufferLimitPubsub: String?

    @Option(
        help: """
            "<hard> <soft> <seconds>": a client with more unsent replies is disconnected \
            (TENANTD_CLIENT_OUTPUT_BUFFER_LIMIT_NORMAL). Default "0 0 0" (none, as Redis).
            """
    )
    var clientOutputBufferLimitNormal: String?

    @Option(
        help: """
            Most bytes of unsent replies all connections together hold; past it the connections \
            holding the most are closed (TENANTD_MAXMEMORY_CLIENTS). 0 = no bound. Default 256mb.
            """
    )
    var maxmemoryClients: String?

    @Option(
        help: """
            Most bytes the migrations arriving here (TENANT RECEIVE) hold in staging together \
            (TENANTD_MIGRATE_STAGING_LIMIT). 0 = no bound. Default 32gb.
            """
    )
    var migrateStagingLimit: String?

    @Option(
        help: """
            Event loops: connections and tenants are spread over them, a tenant staying on one \
            (TENANTD_THREADS). Default: the CPUs tenantd may run on.
            """
    )
    var threads: Int?

    func run() async throws {
        // Everything tenantd writes is its own user's only (directories 0700, files 0600).
        umask(0o077)
        // A certificate renewal's SIGHUP during start-up must not end the process (the reloader
        // takes it over once it runs).
        signal(SIGHUP, SIG_IGN)
        let environment = Environment.current
        var configured = try Settings(command: self, environment: environment)
        let logLevel = configured.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: "tenantd")
        configured.server.limits.maxClients = FileDescriptorLimit.adjust(
            maxClients: configured.server.limits.maxClients,
            logger: logger
        )
        // Before anything uses the event loops: their number is fixed at first use.
        EventLoops.configure(threads: configured.threads)
        configured.engine.placement = EventLoops.placement(
            connectionsMove: configured.server.limits.moveConnections
        )
        let settings = configured
        let metrics = PrometheusCollectorRegistry()
        if settings.metricsPort > 0 {
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))
        }
        let registry = TenantRegistry(configuration: settings.engine, logger: logger)
        do {
            try await registry.bootstrap()
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        let dataDirectory = settings.engine.dataDirectory
        let tls = settings.server.tls
        // The ready line, once the RESP port and the metrics port (if any) are both bound.
        let ready = ReadyLine(waitingFor: settings.metricsPort > 0 ? 2 : 1)
        let server = TenantServer(configuration: settings.server, registry: registry, logger: logger) { host, port in
            let tlsField = tls.map { " tls_port=\($0.boundPort.load(ordering: .relaxed))" } ?? ""
            ready.set("tenantd ready host=\(host) port=\(port)\(tlsField) data=\(dataDirectory)\n")
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: EngineService(registry: registry))
        ]
        if settings.metricsPort > 0 {
            services.append(
                .init(
                    service: Self.metricsListener(
                        settings,
                        registry: registry,
                        metrics: metrics,
                        logger: logger,
                        ready: ready
                    )
                )
            )
        }
        if let directory = settings.backupDirectory {
            services.append(.init(service: try Self.backups(in: directory, registry: registry, logger: logger)))
        }
        if let tls {
            services.append(.init(service: CertificateReloader(listener: tls, logger: logger)))
        }
        services.append(.init(service: server))
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
    }

    /// The scheduled backups into `directory`, made if it is not there.
    private static func backups(in directory: String, registry: TenantRegistry, logger: Logger) throws -> BackupService
    {
        do {
            _ = try POSIXFile.makeDirectory(directory)
        } catch {
            logger.critical("cannot use the backup directory \(directory): \(error)")
            throw ExitCode(1)
        }
        return BackupService(scheduler: BackupScheduler(registry: registry, directory: directory, logger: logger))
    }

    /// The Prometheus endpoint: swift-metrics' registry, the memory budget's figures read at each
    /// scrape (nothing on the hot path), and the per-tenant series.
    private static func metricsListener(
        _ settings: Settings,
        registry: TenantRegistry,
        metrics: PrometheusCollectorRegistry,
        logger: Logger,
        ready: ReadyLine
    ) -> MetricsListener {
        let memory = registry.memory.map { budget in
            (
                budget,
                Gauge(label: MetricFamily.memoryMessages.name),
                Gauge(label: MetricFamily.memoryMessagesLimit.name),
                Gauge(label: MetricFamily.memoryChunkCache.name)
            )
        }
        let exposition = MetricsExposition(counters: registry.counters, tenantLimit: settings.metricsTenants)
        return MetricsListener(
            host: settings.metricsHost,
            port: settings.metricsPort,
            logger: logger,
            onBound: { ready.done() },
            render: {
                if let (budget, messages, limit, cache) = memory {
                    messages.record(budget.residentBytes)
                    limit.record(budget.limit)
                    cache.record(budget.cachedBytes)
                }
                return exposition.render(metrics.emitToBuffer())
            }
        )
    }
}

/// Keeps the engine for the life of the server and closes every tenant's log after the server stopped.
struct EngineService: Service {
    let registry: TenantRegistry

    func run() async throws {
        try? await gracefulShutdown()
        await self.registry.shutdown()
    }
}

/// Runs the backup schedule until the server shuts down (a backup in progress is cancelled
/// between tenants, never halfway through one: its snapshot finishes or is removed).
struct BackupService: Service {
    let scheduler: BackupScheduler

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await self.scheduler.run()
        }
    }
}

/// Reloads the TLS certificate and key on SIGHUP: new connections get them, open ones keep theirs;
/// files that do not load are logged and the certificate in use stays.
struct CertificateReloader: Service {
    let listener: TLSListener
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                do {
                    try self.listener.reload()
                    self.logger.notice(
                        "TLS certificate reloaded",
                        metadata: ["event": "tls_reloaded", "file": "\(self.listener.certificateFile)"]
                    )
                } catch {
                    self.logger.error("TLS certificate not reloaded (the one in use stays): \(error)")
                }
            }
        }
    }
}

/// The line harnesses wait for on a pipe, written once every listener it waits for is bound.
final class ReadyLine: Sendable {
    private let state: Mutex<(waiting: Int, line: String?)>

    init(waitingFor listeners: Int) {
        self.state = Mutex((listeners, nil))
    }

    /// The server's listener is bound: this is the line.
    func set(_ line: String) {
        let text = self.state.withLock { state -> String? in
            state.line = line
            state.waiting -= 1
            return state.waiting == 0 ? line : nil
        }
        if let text { Self.emit(text) }
    }

    /// Another listener is bound (or gave up).
    func done() {
        let text = self.state.withLock { state -> String? in
            state.waiting -= 1
            return state.waiting == 0 ? state.line : nil
        }
        if let text { Self.emit(text) }
    }

    /// One unbuffered write.
    private static func emit(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
    }
}
