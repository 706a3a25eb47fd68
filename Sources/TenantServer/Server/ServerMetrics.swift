import Metrics
import TenantEngine

/// The server's metrics, through swift-metrics (tenantd exports them to Prometheus).
enum ServerMetrics {
    /// The commands counted by name; anything else is `other`, so clients cannot grow the label set.
    private static let known: Set<String> = Set(CommandTable.all.map(\.name))

    /// Counters made once (after tenantd bootstrapped the metrics system), not on every command.
    private static let commands: [String: Counter] = Dictionary(
        uniqueKeysWithValues: (Self.known.map { $0.lowercased() } + ["other"]).map {
            ($0, Counter(label: "tenantd_commands_total", dimensions: [("command", $0)]))
        }
    )
    private static let errors: [ReplyCode: Counter] = Dictionary(
        uniqueKeysWithValues: ReplyCode.allCases.map {
            ($0, Counter(label: "tenantd_command_errors_total", dimensions: [("code", $0.rawValue)]))
        }
    )
    private static let connections = Counter(label: "tenantd_connections_total")
    private static let refused = Counter(label: "tenantd_connections_refused_total")
    private static let authFailures = Counter(label: "tenantd_auth_failures_total")

    static func command(_ name: String) {
        Self.commands[Self.known.contains(name) ? name.lowercased() : "other"]?.increment()
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

    static func connectionClosed() {
        Self.open.decrement()
    }

    private static let open = Meter(label: "tenantd_connections_open")
}
