import Metrics
import Synchronization
import TenantEngine
import TenantMetrics

/// The server's metrics, through swift-metrics (tenantd exports them to Prometheus).
enum ServerMetrics {
    /// Commands tenantd does not have, counted together so clients cannot grow the label set
    /// (each known command has its counter in its ``CommandSpec``).
    private static let otherCommands = Counter(
        label: MetricFamily.commands.name,
        dimensions: [("command", "other")]
    )
    private static let errors: [ReplyCode: Counter] = Dictionary(
        uniqueKeysWithValues: ReplyCode.allCases.map {
            ($0, Counter(label: MetricFamily.commandErrors.name, dimensions: [("code", $0.rawValue)]))
        }
    )
    private static let connections = Counter(label: MetricFamily.connections.name)
    private static let refused = Counter(label: MetricFamily.connectionsRefused.name)
    private static let authFailures = Counter(label: MetricFamily.authFailures.name)

    static func command(_ spec: CommandSpec?) {
        (spec?.counter ?? Self.otherCommands).increment()
        ServerStats.shared.commands.wrappingAdd(1, ordering: .relaxed)
    }

    /// The latency series of a command (those tenantd does not have share one).
    static func latency(of spec: CommandSpec?) -> LatencyHistogram {
        spec?.latency ?? Self.otherLatency
    }

    static let otherLatency = LatencyHistogram()

    /// An error reply, by its contract code (framing errors from the parser included).
    static func error(code: ReplyCode) {
        Self.errors[code]?.increment()
    }

    static func connectionOpened() {
        Self.connections.increment()
        Self.open.increment()
        ServerStats.shared.connectionsReceived.wrappingAdd(1, ordering: .relaxed)
        ServerStats.shared.connectionsOpen.wrappingAdd(1, ordering: .relaxed)
    }

    /// A connection over `maxclients`.
    static func connectionRefused() {
        Self.refused.increment()
        ServerStats.shared.connectionsRefused.wrappingAdd(1, ordering: .relaxed)
    }

    /// A failed AUTH (or HELLO AUTH).
    static func authFailed() {
        Self.authFailures.increment()
        ServerStats.shared.authFailures.wrappingAdd(1, ordering: .relaxed)
    }

    /// A connection stopped reading because its tenant was at its share (``TenantAdmission``).
    static func fairShareWait() {
        Self.fairShareWaits.increment()
    }

    private static let fairShareWaits = Counter(label: MetricFamily.fairShareWaits.name)

    static func connectionClosed() {
        Self.open.decrement()
        ServerStats.shared.connectionsOpen.wrappingSubtract(1, ordering: .relaxed)
    }

    private static let open = Meter(label: MetricFamily.connectionsOpen.name)
}

/// The server-wide figures INFO reports (swift-metrics counters cannot be read back): relaxed
/// atomics, bumped where the metrics are.
final class ServerStats: Sendable {
    static let shared = ServerStats()

    /// When the process started (for `uptime_in_seconds`).
    let startedAt = ContinuousClock.now
    let commands = Atomic<UInt64>(0)
    /// Commands run on the synchronous lane, in a channel handler on their tenant's loop.
    let laneCommands = Atomic<UInt64>(0)
    /// Times a connection was held back for its tenant's share of its loop's turn.
    let laneShareHolds = Atomic<UInt64>(0)
    /// Times a connection moved to its tenant's event loop (``ConnectionSocket``).
    let connectionMoves = Atomic<UInt64>(0)
    let connectionsReceived = Atomic<UInt64>(0)
    let connectionsOpen = Atomic<Int64>(0)
    let connectionsRefused = Atomic<UInt64>(0)
    let authFailures = Atomic<UInt64>(0)
    /// Request and reply bytes of every connection, with a tenant context or not.
    let bytesIn = Atomic<UInt64>(0)
    let bytesOut = Atomic<UInt64>(0)

    func received(_ bytes: Int) {
        self.bytesIn.wrappingAdd(UInt64(truncatingIfNeeded: bytes), ordering: .relaxed)
    }

    func sent(_ bytes: Int) {
        self.bytesOut.wrappingAdd(UInt64(truncatingIfNeeded: bytes), ordering: .relaxed)
    }
}
