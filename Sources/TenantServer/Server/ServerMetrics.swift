import Metrics

/// The server's metrics, through swift-metrics (tenantd exports them to Prometheus).
enum ServerMetrics {
    /// The commands counted by name; anything else is `other`, so clients cannot grow the label set.
    private static let known: Set<String> = [
        "AUTH", "CLIENT", "COMMAND", "CONFIG", "ECHO", "HELLO", "HISTORY", "PING", "POST", "QUIT", "ROOMS", "SELECT",
        "SUBSCRIBE", "TENANT", "UNSUBSCRIBE", "USAGE", "USE", "USER", "WHOAMI",
    ]
    private static let codes: Set<String> = [
        "ERR", "NOAUTH", "WRONGPASS", "NOPERM", "NOTENANT", "NOTFOUND", "SUSPENDED", "EXISTS", "INVALID", "QUOTA",
        "TOOBIG", "IOERR", "LOADING", "PROTO",
    ]

    /// Counters made once (after tenantd bootstrapped the metrics system), not on every command.
    private static let commands: [String: Counter] = Dictionary(
        uniqueKeysWithValues: (Self.known.map { $0.lowercased() } + ["other"]).map {
            ($0, Counter(label: "tenantd_commands_total", dimensions: [("command", $0)]))
        }
    )
    private static let errors: [String: Counter] = Dictionary(
        uniqueKeysWithValues: (Array(Self.codes) + ["other"]).map {
            ($0, Counter(label: "tenantd_command_errors_total", dimensions: [("code", $0)]))
        }
    )
    private static let connections = Counter(label: "tenantd_connections_total")
    private static let refused = Counter(label: "tenantd_connections_refused_total")
    private static let authFailures = Counter(label: "tenantd_auth_failures_total")

    static func command(_ name: String) {
        Self.commands[Self.known.contains(name) ? name.lowercased() : "other"]?.increment()
    }

    static func error(code: String) {
        Self.errors[Self.codes.contains(code) ? code : "other"]?.increment()
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
