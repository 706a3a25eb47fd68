import Metrics
import TenantEngine

/// The server's metrics, through swift-metrics (tenantd exports them to Prometheus).
enum ServerMetrics {
    /// Commands tenantd does not have, counted together so clients cannot grow the label set
    /// (each known command has its counter in its ``CommandSpec``).
    private static let otherCommands = Counter(label: "tenantd_commands_total", dimensions: [("command", "other")])
    private static let errors: [ReplyCode: Counter] = Dictionary(
        uniqueKeysWithValues: ReplyCode.allCases.map {
            ($0, Counter(label: "tenantd_command_errors_total", dimensions: [("code", $0.rawValue)]))
        }
    )
    private static let connections = Counter(label: "tenantd_connections_total")
    private static let refused = Counter(label: "tenantd_connections_refused_total")
    private static let authFailures = Counter(label: "tenantd_auth_failures_total")

    static func command(_ spec: CommandSpec?) {
        (spec?.counter ?? Self.otherCommands).increment()
    }

    /// An error reply, by its contract code (framing errors from the parser included).
    static func error(code: ReplyCode) {
        Self.errors[code]?.increment()
    }

    static func connectionOpened() {
        Self.connections.increment()
        Self.open.increment()
    }

    /// A connection over `maxclients`.
    static func connectionRefused() {
        Self.refused.increment()
    }

    /// A failed AUTH (or HELLO AUTH).
    static func authFailed() {
        Self.authFailures.increment()
    }

    /// A connection stopped reading because its tenant was at its share (``TenantAdmission``).
    static func fairShareWait() {
        Self.fairShareWaits.increment()
    }

    private static let fairShareWaits = Counter(label: "tenantd_fair_share_waits_total")

    static func connectionClosed() {
        Self.open.decrement()
    }

    private static let open = Meter(label: "tenantd_connections_open")
}
