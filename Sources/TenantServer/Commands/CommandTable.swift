/// What the server knows of one command, for the dispatcher, the metrics and `COMMAND`.
struct CommandSpec: Sendable, Hashable {
    /// The name, upper-cased.
    let name: String
    /// The command runs only after AUTH (NOAUTH before).
    let needsAuth: Bool
    /// The command runs on a RESP2 connection with subscriptions, as in Redis.
    let inSubscribedMode: Bool
}

/// Every command tenantd runs, in one place.
enum CommandTable {
    static let all: [CommandSpec] = [
        // Connection commands: they run before AUTH.
        CommandSpec(name: "PING", needsAuth: false, inSubscribedMode: true),
        CommandSpec(name: "ECHO", needsAuth: false, inSubscribedMode: false),
        CommandSpec(name: "QUIT", needsAuth: false, inSubscribedMode: true),
        CommandSpec(name: "HELLO", needsAuth: false, inSubscribedMode: false),
        CommandSpec(name: "AUTH", needsAuth: false, inSubscribedMode: false),
        CommandSpec(name: "CLIENT", needsAuth: false, inSubscribedMode: false),
        CommandSpec(name: "COMMAND", needsAuth: false, inSubscribedMode: false),
        CommandSpec(name: "CONFIG", needsAuth: false, inSubscribedMode: false),
        CommandSpec(name: "SELECT", needsAuth: false, inSubscribedMode: false),
        // TENANT SIGNUP runs before AUTH; every other TENANT subcommand needs the operator.
        CommandSpec(name: "TENANT", needsAuth: true, inSubscribedMode: false),
        CommandSpec(name: "WHOAMI", needsAuth: true, inSubscribedMode: false),
        CommandSpec(name: "USE", needsAuth: true, inSubscribedMode: false),
        CommandSpec(name: "POST", needsAuth: true, inSubscribedMode: false),
        CommandSpec(name: "HISTORY", needsAuth: true, inSubscribedMode: false),
        CommandSpec(name: "ROOMS", needsAuth: true, inSubscribedMode: false),
        CommandSpec(name: "USAGE", needsAuth: true, inSubscribedMode: false),
        CommandSpec(name: "SUBSCRIBE", needsAuth: true, inSubscribedMode: true),
        CommandSpec(name: "UNSUBSCRIBE", needsAuth: true, inSubscribedMode: true),
        CommandSpec(name: "USER", needsAuth: true, inSubscribedMode: false),
    ]

    /// The commands by name.
    static let byName: [String: CommandSpec] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    /// Names Redis also accepts in subscribed mode: refused as unknown here, but not with the
    /// subscribed-mode error (they are pub/sub commands tenantd does not have).
    static let redisSubscribedModeNames: Set<String> = [
        "PSUBSCRIBE", "PUNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE", "RESET",
    ]

    /// Whether `name` may run on a RESP2 connection with subscriptions.
    static func runsInSubscribedMode(_ name: String) -> Bool {
        Self.byName[name]?.inSubscribedMode ?? Self.redisSubscribedModeNames.contains(name)
    }
}
