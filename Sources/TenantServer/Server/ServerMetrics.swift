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

    static func command(_ name: String) {
        let label = Self.known.contains(name) ? name.lowercased() : "other"
        Counter(label: "tenantd_commands_total", dimensions: [("command", label)]).increment()
    }

    static func error(code: String) {
        let label = Self.codes.contains(code) ? code : "other"
        Counter(label: "tenantd_command_errors_total", dimensions: [("code", label)]).increment()
    }

    static func connectionOpened() {
        Counter(label: "tenantd_connections_total").increment()
        Self.open.increment()
    }

    static func connectionClosed() {
        Self.open.decrement()
    }

    private static let open = Meter(label: "tenantd_connections_open")
}
