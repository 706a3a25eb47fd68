import Metrics
import NIOCore
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
///
/// A class: the lane looks one up per request, and a copy of a struct this size retained each of
/// its references. `@unchecked Sendable`: ``hot`` and ``settlesFirst`` are set only while
/// ``CommandTable/all`` is built, and nothing changes after.
final class CommandSpec: @unchecked Sendable {
    typealias Handler = @Sendable (CommandDispatcher, Arguments, inout Session) async throws -> CommandOutcome
    /// Runs the command on a ``SyncLane``, in the channel handler on its tenant's event loop, in
    /// the tenant the lane resolved (``SyncLane/resolve(_:_:)``: nil for a command that reads
    /// none); returns nil for a form the lane does not take, which then runs as usual.
    typealias HotHandler = @Sendable (CommandDispatcher, [ByteBuffer], SyncLane, LaneTarget?) throws -> HotOutcome?

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
    /// Runs it on the synchronous lane: the hot commands (POST, HISTORY, ROOMS, PING, ECHO,
    /// WHOAMI, SUBSCRIBE) have one; the rest run only through ``handler``.
    private(set) var hot: HotHandler?
    /// It first waits for the connection's POSTs still waiting for the log (it reads what they
    /// change), on the lane and on the connection's task alike. False for POST (pipelined POSTs
    /// share the log's writes; their replies still leave in order), PING and ECHO (they read
    /// nothing a POST changes).
    private(set) var settlesFirst = true
    /// Whether its first argument is a room, which may name its tenant in the path form
    /// (`/tenant/<id>/<room>`): POST and HISTORY.
    private(set) var takesRoom = false
    /// Whether the lane runs it only for a tenant on the connection's own loop (SUBSCRIBE: its
    /// tenant delivers the replies to the handler, which must have them before the next request's,
    /// so it cannot go in a ``RemoteRun``); for a tenant elsewhere it goes to the task.
    private(set) var runsHereOnly = false
    /// Whether it reads the tenant (on the lane, it runs on the tenant's loop); PING and ECHO
    /// do not, and run on the connection's loop wherever its tenant is.
    private(set) var readsTenant = true
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
        self.counter = Counter(label: MetricFamily.commands.name, dimensions: [("command", name.lowercased())])
    }

    /// The command with a handler for the synchronous lane.
    /// - Parameter settlesFirst: false for commands that read nothing a POST changes.
    func onLane(
        settlesFirst: Bool = true,
        readsTenant: Bool = true,
        takesRoom: Bool = false,
        runsHereOnly: Bool = false,
        _ hot: @escaping HotHandler
    ) -> CommandSpec {
        self.hot = hot
        self.runsHereOnly = runsHereOnly
        self.settlesFirst = settlesFirst
        self.readsTenant = readsTenant
        self.takesRoom = takesRoom
        return self
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
        }
        .onLane(settlesFirst: false, readsTenant: false) { _, words, _, _ in
            words.count == 1 ? .reply(.pong) : .reply(try CommandDispatcher.pong(Arguments(words)))
        },
        CommandSpec("ECHO", arity: 1...1, needsAuth: false) { _, arguments, _ in
            .reply(.bulkString(arguments[0]))
        }
        .onLane(settlesFirst: false, readsTenant: false) { _, words, _, _ in
            .reply(.bulkBytes(Array(words[1].readableBytesView)))
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
        }
        .onLane { dispatcher, _, lane, target in
            .reply(try dispatcher.whoami(lane, target: try LaneTarget.needed(target)))
        },
        CommandSpec("USE", arity: 1...1) { dispatcher, arguments, session in
            .reply(try await dispatcher.use(arguments, principal: try session.authenticated(), session: &session))
        },
        CommandSpec("POST", arity: 2...2, tenant: .contextOrPath) { dispatcher, arguments, session in
            try await dispatcher.post(arguments, principal: try session.authenticated(), session: &session)
        }
        .onLane(settlesFirst: false, takesRoom: true) { dispatcher, words, lane, target in
            try dispatcher.post(words, lane: lane, target: try LaneTarget.needed(target))
        },
        CommandSpec("HISTORY", arity: 1...5, tenant: .contextOrPath) { dispatcher, arguments, session in
            .reply(try await dispatcher.history(arguments, principal: try session.authenticated(), session: session))
        }
        .onLane(takesRoom: true) { dispatcher, words, lane, target in
            try dispatcher.history(words, lane: lane, target: try LaneTarget.needed(target))
        },
        CommandSpec("ROOMS", arity: 0...4, tenant: .context) { dispatcher, arguments, session in
            .reply(try await dispatcher.rooms(arguments, principal: try session.authenticated(), session: session))
        }
        .onLane { dispatcher, words, lane, target in
            .reply(try dispatcher.rooms(Arguments(words), lane: lane, target: try LaneTarget.needed(target)))
        },
        CommandSpec("USAGE", arity: 0...0, tenant: .context) { dispatcher, _, session in
            .reply(try await dispatcher.usage(principal: try session.authenticated(), session: session))
        },
        CommandSpec("SUBSCRIBE", arity: 1...Int.max, tenant: .contextOrPath, inSubscribedMode: true) {
            dispatcher,
            arguments,
            session in
            try await dispatcher.subscribe(arguments, principal: try session.authenticated(), session: &session)
        }
        .onLane(takesRoom: true, runsHereOnly: true) { dispatcher, words, lane, target in
            try dispatcher.subscribe(words, lane: lane, target: try LaneTarget.needed(target))
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

    /// POST: the connection's task runs a pipelined run of them as one call to the tenant.
    static let post = byName["POST"]!
    /// ECHO: the connection's task answers it before decoding its argument (any bytes).
    static let echo = byName["ECHO"]!

    /// Whether a request's first word names POST (any case).
    static func isPost(_ name: ByteBuffer) -> Bool { Self.hotSpec(for: name) === Self.post }

    /// Whether a request's first word names ECHO (any case).
    static func isEcho(_ name: ByteBuffer) -> Bool { Self.hotSpec(for: name) === Self.echo }

    /// Whether a request's first word names SUBSCRIBE or UNSUBSCRIBE (any case): commands whose
    /// replies their tenants deliver to the connection's handler (``PushSink``), so the task runs
    /// them only once the replies before them are there.
    static func delivers(_ name: ByteBuffer) -> Bool {
        let count = name.readableBytes
        guard count == 9 || count == 11 else { return false }
        return name.readableBytesView.elementsEqual((count == 9 ? "SUBSCRIBE" : "UNSUBSCRIBE").utf8) {
            $0 & 0xDF == $1
        }
    }

    /// The commands with a ``CommandSpec/hot`` handler, by the length of their names.
    private static let hotCommands: [[(name: [UInt8], spec: CommandSpec)]] = {
        var byLength = Array(repeating: [(name: [UInt8], spec: CommandSpec)](), count: 16)
        for spec in all where spec.hot != nil {
            let name = Array(spec.name.utf8)
            precondition(name.count < 16 && name.allSatisfy { $0 >= 0x41 && $0 <= 0x5A }, "hot names are short, A-Z")
            byLength[name.count].append((name, spec))
        }
        return byLength
    }()

    /// The hot command a request's first word names (any case), without making a string of it.
    static func hotSpec(for name: ByteBuffer) -> CommandSpec? {
        let count = name.readableBytes
        guard count < 16 else { return nil }
        return name.withUnsafeReadableBytes { bytes -> CommandSpec? in
            for index in Self.hotCommands[count].indices {
                let candidate = Self.hotCommands[count][index]
                // ASCII letters only in the names: clearing bit 5 upper-cases exactly those.
                if candidate.name.withUnsafeBufferPointer({ expected in
                    (0..<count).allSatisfy { bytes[$0] & 0xDF == expected[$0] }
                }) {
                    return candidate.spec
                }
            }
            return nil
        }
    }

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
