import Metrics
import RESP
import TenantEngine
import TenantMetrics

/// What a command needs of the connection's context before it runs.
enum TenantNeed: Sendable, Hashable {
    /// Nothing: connection commands, TENANT (the operator's), WHOAMI, USE.
    case none
    /// A tenant context (AUTH as a tenant's user, or USE): NOTENANT without one.
    case context
    /// A tenant context, or rooms in the path form `/tenant/<id>/<room>` (checked per room).
    case contextOrPath
}

/// What the server knows of one command, for the dispatcher, the metrics and `COMMAND`.
struct CommandSpec: Sendable {
    typealias Handler = @Sendable (CommandDispatcher, Arguments, inout Session) async throws -> CommandOutcome

    /// The name, upper-cased.
    let name: String
    /// How many arguments (after the name) it takes; outside this, Redis's "wrong number of
    /// arguments" error. Subcommands check their own.
    let arity: ClosedRange<Int>
    /// The command runs only after AUTH (NOAUTH before), except the subcommands listed.
    let needsAuth: Bool
    let anonymousSubcommands: Set<String>
    /// The tenant context it needs.
    let tenant: TenantNeed
    /// The command runs on a RESP2 connection with subscriptions, as in Redis.
    let inSubscribedMode: Bool
    /// Runs it.
    let handler: Handler
    /// Its `tenantd_commands_total` series, made once (the table is first read after tenantd
    /// bootstrapped the metrics system), not looked up on every command.
    let counter: Counter
    /// Its `tenantd_command_duration_seconds` series.
    let latency = LatencyHistogram()

    init(
        _ name: String,
        arity: ClosedRange<Int>,
        needsAuth: Bool = true,
        anonymousSubcommands: Set<String> = [],
        tenant: TenantNeed = .none,
        inSubscribedMode: Bool = false,
        handler: @escaping Handler
    ) {
        self.name = name
        self.arity = arity
        self.needsAuth = needsAuth
        self.anonymousSubcommands = anonymousSubcommands
        self.tenant = tenant
        self.inSubscribedMode = inSubscribedMode
        self.handler = handler
        self.counter = Counter(label: "tenantd_commands_total", dimensions: [("command", name.lowercased())])
    }

    /// Whether these arguments may run before AUTH.
    func isAnonymous(_ arguments: Arguments) -> Bool {
        guard self.needsAuth else { return true }
        guard !self.anonymousSubcommands.isEmpty else { return false }
        return arguments.keyword(0).map(self.anonymousSubcommands.contains) == true
    }
}

/// Every command tenantd runs, in one place: the dispatcher, the metrics and `COMMAND` read it.
enum CommandTable {
    static let all: [CommandSpec] = [
        // Connection commands: they run before AUTH.
        CommandSpec("PING", arity: 0...1, needsAuth: false, inSubscribedMode: true) { dispatcher, arguments, session in
            dispatcher.ping(arguments, session: session)
        },
        CommandSpec("ECHO", arity: 1...1, needsAuth: false) { _, arguments, _ in
            .reply(.bulkString(arguments[0]))
        },
        CommandSpec("QUIT", arity: 0...Int.max, needsAuth: false, inSubscribedMode: true) { _, _, _ in
            .replyAndClose(.ok)
        },
        CommandSpec("HELLO", arity: 0...Int.max, needsAuth: false) { dispatcher, arguments, session in
            .reply(try await dispatcher.hello(arguments, session: &session))
        },
        CommandSpec("AUTH", arity: 1...2, needsAuth: false) { dispatcher, arguments, session in
            .reply(try await dispatcher.auth(arguments, session: &session))
        },
        CommandSpec("CLIENT", arity: 1...Int.max, needsAuth: false) { dispatcher, arguments, session in
            .reply(try dispatcher.client(arguments, session: &session))
        },
        CommandSpec("COMMAND", arity: 0...Int.max, needsAuth: false) { _, arguments, _ in
            // Clients ask for docs and hints on connect; an empty answer is harmless.
            let empty: [(String, RESPValue)] = []
            switch arguments.keyword(0) {
            case "COUNT": return .reply(.integer(Int64(CommandTable.all.count)))
            case "DOCS": return .reply(.map(empty))
            default: return .reply(.array([]))
            }
        },
        CommandSpec("CONFIG", arity: 1...Int.max, needsAuth: false) { dispatcher, arguments, _ in
            .reply(try dispatcher.config(arguments))
        },
        CommandSpec("SELECT", arity: 1...1, needsAuth: false) { _, arguments, _ in
            guard arguments[0] == "0" else { throw CommandError("DB index is out of range") }
            return .reply(.ok)
        },
        // TENANT SIGNUP runs before AUTH; every other TENANT subcommand needs the operator.
        CommandSpec("TENANT", arity: 1...Int.max, anonymousSubcommands: ["SIGNUP"]) { dispatcher, arguments, session in
            if arguments.keyword(0) == "SIGNUP" {
                return .reply(try await dispatcher.signup(arguments, session: session))
            }
            return .reply(try await dispatcher.tenantCommand(arguments, principal: try session.authenticated()))
        },
        CommandSpec("INFO", arity: 0...32) { dispatcher, arguments, session in
            .reply(try await dispatcher.info(arguments, principal: try session.authenticated(), session: session))
        },
        CommandSpec("WHOAMI", arity: 0...0) { dispatcher, _, session in
            .reply(try await dispatcher.whoami(session: session))
        },
        CommandSpec("USE", arity: 1...1) { dispatcher, arguments, session in
            .reply(try await dispatcher.use(arguments, principal: try session.authenticated(), session: &session))
        },
        CommandSpec("POST", arity: 2...2, tenant: .contextOrPath) { dispatcher, arguments, session in
            try await dispatcher.post(arguments, principal: try session.authenticated(), session: &session)
        },
        CommandSpec("HISTORY", arity: 1...5, tenant: .contextOrPath) { dispatcher, arguments, session in
            .reply(try await dispatcher.history(arguments, principal: try session.authenticated(), session: session))
        },
        CommandSpec("ROOMS", arity: 0...4, tenant: .context) { dispatcher, arguments, session in
            .reply(try await dispatcher.rooms(arguments, principal: try session.authenticated(), session: session))
        },
        CommandSpec("USAGE", arity: 0...0, tenant: .context) { dispatcher, _, session in
            .reply(try await dispatcher.usage(principal: try session.authenticated(), session: session))
        },
        CommandSpec("SUBSCRIBE", arity: 1...Int.max, tenant: .contextOrPath, inSubscribedMode: true) {
            dispatcher,
            arguments,
            session in
            try await dispatcher.subscribe(arguments, principal: try session.authenticated(), session: &session)
        },
        CommandSpec("UNSUBSCRIBE", arity: 0...Int.max, inSubscribedMode: true) { dispatcher, arguments, session in
            try await dispatcher.unsubscribe(arguments, principal: try session.authenticated(), session: &session)
        },
        CommandSpec("USER", arity: 1...Int.max, tenant: .context) { dispatcher, arguments, session in
            .reply(try await dispatcher.user(arguments, principal: try session.authenticated(), session: &session))
        },
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
