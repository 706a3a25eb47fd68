import Logging
import RESP
import Synchronization
import TenantEngine
import TenantMetrics

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs one command against the engine on behalf of a connection's ``Session``.
final class CommandDispatcher: Sendable {
    let registry: TenantRegistry
    let logger: Logger
    let limits: ServerLimits
    let authThrottle: AuthThrottle
    /// The tenants' shares of the requests in flight.
    let admission: TenantAdmission
    /// The port the server listens on, once bound (INFO's `tcp_port`).
    let port = Atomic<Int>(0)
    /// `TENANT_DOMAIN`, lowercased: a TLS server name under it names the connection's tenant.
    let tenantDomain: String?
    /// The connections by their tenant context, to tell them when their tenant leaves.
    let contexts = TenantContexts()
    /// `maxmemory-clients`: what every connection's unsent replies add up to.
    let clientMemory: ClientMemoryGuard
    /// The log level says every command is logged (`trace`), or every failed one (`debug`): read
    /// once, not per command (a logger's copy retains its handler).
    let logsEveryCommand: Bool
    let logsFailedCommands: Bool

    init(registry: TenantRegistry, logger: Logger, limits: ServerLimits, tenantDomain: String? = nil) {
        self.registry = registry
        self.logger = logger
        self.logsEveryCommand = logger.logLevel <= .trace
        self.logsFailedCommands = logger.logLevel <= .debug
        self.limits = limits
        self.tenantDomain = tenantDomain?.lowercased()
        self.authThrottle = AuthThrottle()
        self.clientMemory = ClientMemoryGuard(limit: limits.maxMemoryClients)
        self.admission = TenantAdmission(window: limits.fairShareWindow, minimumShare: limits.fairShareMinimum)
        let contexts = self.contexts
        registry.migrationEvents.add { id, reply in
            contexts.tell(id: id, error: "\(ReplyCode.migrated.rawValue) \(reply)")
        }
    }
    static let serverVersion = "0.1.0"

    /// Runs a command; every error becomes its contract reply.
    func handle(_ arguments: Arguments, session: inout Session) async -> CommandOutcome {
        let spec = CommandTable.byName[arguments.name]
        ServerMetrics.command(spec)
        // Reset once the command waited for the connection's last POST: its own time only.
        var start = LatencyHistogram.now()
        defer { ServerMetrics.latency(of: spec).record(since: start) }
        do {
            let outcome = try await self.dispatch(arguments, spec: spec, session: &session, start: &start)
            if self.logsEveryCommand {
                self.logCommand(arguments.name, connection: session.id, tenantID: session.tenantID, error: nil)
            }
            return outcome
        } catch {
            if self.logsFailedCommands || (error as? TenantError)?.kind == .storageFailed {
                self.logCommand(arguments.name, connection: session.id, tenantID: session.tenantID, error: error)
            }
            return .reply(.reply(for: error))
        }
    }

    /// One line about a command: every command at `trace`, failed ones at `debug`, an IOERR at
    /// `warning` (the operator's business), with the connection, tenant and command as metadata.
    func logCommand(_ name: String, connection: Int64, tenantID: String?, error: (any Error)?) {
        var metadata: Logger.Metadata = [
            "connection": "\(connection)",
            "command": "\(name.prefix(32).lowercased())",
        ]
        if let id = tenantID { metadata["tenant_id"] = "\(id)" }
        guard let error else {
            self.logger.trace("command", metadata: metadata)
            return
        }
        // The reply's text, not the reply: ``RESPValue/reply(for:)`` counts the error, and the
        // reply the client gets has counted it once already.
        let (code, message) = RESPValue.contractError(error)
        metadata["error"] = "\(code.rawValue) \(message)"
        let ioError = (error as? TenantError)?.kind == .storageFailed
        self.logger.log(level: ioError ? .warning : .debug, "command failed", metadata: metadata)
    }

    /// Runs a command as ``CommandTable`` describes it: subscribed mode, AUTH, arity, tenant
    /// context, then its handler.
    private func dispatch(
        _ arguments: Arguments,
        spec: CommandSpec?,
        session: inout Session,
        start: inout UInt64
    ) async throws -> CommandOutcome {
        if session.isInSubscribedMode && !CommandTable.runsInSubscribedMode(arguments.name) {
            throw CommandError(
                "Can't execute '\(arguments.name.lowercased().prefix(64))': only (P|S)SUBSCRIBE / "
                    + "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )
        }
        guard let spec else { throw Self.unknownCommand(arguments) }
        if spec.isAnonymous(arguments) {
            try arguments.expect(spec.arity, for: spec.name.lowercased())
            return try await spec.handler(self, arguments, &session)
        }
        guard session.principal != nil else { throw ServerError(.noAuth, "Authentication required.") }
        try arguments.expect(spec.arity, for: spec.name.lowercased())
        try await session.refreshContext(from: self.registry)
        if spec.settlesFirst {
            // Commands run in order: whatever follows a POST sees it (or its failure) first. A
            // POST does not wait for the one before it in the same tenant (see `post`): pipelined
            // POSTs share group commits, and their replies still leave in order. PING and ECHO
            // read nothing a POST changes.
            await Self.settle(&session)
            start = LatencyHistogram.now()
        }
        if spec.tenant == .context { _ = try session.contextTenant() }
        return try await spec.handler(self, arguments, &session)
    }

    /// Waits until the connection's last POST is durable (or failed).
    static func settle(_ session: inout Session) async {
        guard let pending = session.lastPost else { return }
        session.lastPost = nil
        _ = try? await pending.tenant.commit(pending.ticket)
    }

    func ping(_ arguments: Arguments, session: Session) -> CommandOutcome {
        if session.isInSubscribedMode {
            return .reply(.array([.bulkString("pong"), .bulkString(arguments.count == 1 ? arguments[0] : "")]))
        }
        return .reply(Self.pong(arguments))
    }

    /// PING's reply outside subscribed mode.
    static func pong(_ arguments: Arguments) -> RESPValue {
        arguments.count == 1 ? .bulkString(arguments[0]) : .simpleString("PONG")
    }

    func config(_ arguments: Arguments) throws -> RESPValue {
        guard arguments.keyword(0) == "GET", arguments.count >= 2 else {
            throw CommandError(
                "unknown subcommand or wrong arguments for '\(arguments[0].prefix(64))'. Try CONFIG GET."
            )
        }
        return self.configGet(Array(arguments.words.dropFirst()))
    }

    func whoami(session: Session) async throws -> RESPValue {
        let principal = try session.authenticated()
        let role = try await session.tenant?.roleName(of: principal) ?? "operator"
        return .array([
            session.tenantID.map { .bulkString($0) } ?? .null,
            .bulkString(principal.displayName),
            .bulkString(role),
        ])
    }

    static func unknownCommand(_ arguments: Arguments) -> CommandError {
        let start = arguments.words.prefix(8).map { "'\($0.prefix(64))'" }.joined(separator: " ")
        return CommandError("unknown command '\(arguments.name.prefix(64))', with args beginning with: \(start)")
    }

    // MARK: - Connection commands

    /// The few settings stock tools read (redis-benchmark reads `save` and `appendonly`), by glob pattern.
    private func configGet(_ patterns: [String]) -> RESPValue {
        let settings: [(String, String)] = [
            ("appendfsync", self.registry.configuration.fsyncPolicyName),
            ("appendonly", "yes"),
            ("databases", "1"),
            ("maxmemory", String(self.registry.configuration.maxMemory)),
            ("save", ""),
        ]
        let matching = settings.filter { key, _ in
            patterns.contains { pattern in fnmatch(pattern.lowercased(), key, 0) == 0 }
        }
        return .map(matching.map { ($0.0, RESPValue.bulkString($0.1)) })
    }

    func hello(_ arguments: Arguments, session: inout Session) async throws -> RESPValue {
        var version = session.version
        var index = 0
        if arguments.count > 0 {
            guard let requested = Int(arguments[0]), let parsed = RESPVersion(rawValue: requested) else {
                throw ServerError(.err, "unsupported protocol version; HELLO takes 2 or 3")
            }
            version = parsed
            index = 1
        }
        var name: String?
        while index < arguments.count {
            switch arguments.keyword(index) {
            case "AUTH" where index + 2 < arguments.count:
                try await self.authenticate(user: arguments[index + 1], token: arguments[index + 2], session: &session)
                index += 3
            case "SETNAME" where index + 1 < arguments.count:
                name = try Self.clientName(arguments[index + 1])
                index += 2
            default:
                throw CommandError("syntax error in HELLO option '\(arguments[index])'")
            }
        }
        if let name { session.clientName = name }
        session.version = version
        session.subscriber.setVersion(version)
        return .map([
            ("server", .bulkString("tenantd")),
            ("version", .bulkString(Self.serverVersion)),
            ("proto", .integer(Int64(version.rawValue))),
            ("id", .integer(session.id)),
            ("mode", .bulkString("standalone")),
            ("role", .bulkString("master")),
            ("modules", .array([])),
        ])
    }

    func auth(_ arguments: Arguments, session: inout Session) async throws -> RESPValue {
        if arguments.count == 1 {
            // Redis's one-argument AUTH (redis-cli -a, redis-benchmark -a): the operator's token.
            try await self.authenticate(user: "admin", token: arguments[0], session: &session)
        } else {
            try await self.authenticate(user: arguments[0], token: arguments[1], session: &session)
        }
        return .ok
    }

    /// `admin` is the operator; `user@tenant-ref` a user of one tenant. Every failure is the same
    /// WRONGPASS, logged, and answered after the ``AuthThrottle``'s delay (or with a disconnect).
    func authenticate(user: String, token: String, session: inout Session) async throws {
        do {
            try await self.checkCredential(user: user, token: token, session: &session)
        } catch let error as TenantError where error.kind == .wrongCredentials {
            session.authFailures += 1
            ServerMetrics.authFailed()
            let decision = self.authThrottle.failed(
                address: session.clientAddress,
                connectionFailures: session.authFailures
            )
            self.logger.warning(
                "AUTH failed",
                metadata: [
                    "event": "auth_failed",
                    "connection": "\(session.id)", "address": "\(session.clientAddress)",
                    "user": "\(user.prefix(64))", "failures": "\(session.authFailures)",
                    "delay": "\(decision.delay)",
                    "disconnect": "\(decision.disconnect)",
                ]
            )
            // In one of the address's few slots: more connections buy no more answers.
            await self.authThrottle.waitOut(decision.delay, address: session.clientAddress)
            if decision.disconnect { session.closeAfterReply = true }
            throw error
        }
    }

    /// What a TLS connection's server name says of its tenant under `TENANT_DOMAIN`.
    enum ServerNameTenant {
        /// Not a TLS connection, no `TENANT_DOMAIN`, `subdomain` not an id source, or a name
        /// outside the domain: AUTH works as on a plain connection.
        case none
        /// `<label>.<domain>` where `label` is this tenant's subdomain.
        case tenant(String)
        /// `<label>.<domain>` naming no tenant: nobody authenticates as a tenant's user.
        case nobody
    }

    func serverNameTenant(_ session: Session) async -> ServerNameTenant {
        guard let domain = self.tenantDomain, session.transport.isTLS,
            self.registry.configuration.idSources.contains(.subdomain),
            let name = session.transport.serverName, name.hasSuffix("." + domain)
        else { return .none }
        let label = String(name.dropLast(domain.count + 1))
        guard !label.isEmpty, !label.contains("."), !Names.reservedSubdomains.contains(label),
            let id = await self.registry.tenantID(forSubdomain: label)
        else { return .nobody }
        // Single-tenant mode serves its one tenant only, whatever the name says.
        if let implied = self.registry.impliedTenantID, implied != id { return .nobody }
        return .tenant(id)
    }

    private func checkCredential(user: String, token: String, session: inout Session) async throws {
        let fromServerName = await self.serverNameTenant(session)
        if user == "admin" {
            guard await self.registry.isOperatorToken(token) else { throw TenantError.wrongPass }
            // The context first: an AUTH that fails on it leaves the connection as it was.
            var context: (Tenant, String)?
            if let implied = self.registry.impliedTenantID {
                // Single-tenant mode: every authenticated connection works in the one tenant.
                context = (try await self.registry.tenant(id: implied), implied)
            } else if case .tenant(let id) = fromServerName {
                // The server name's tenant is the context, as for its users.
                context = (try await self.registry.tenant(id: id), id)
            }
            session.principal = .operator
            session.setContext(context?.0, id: context?.1)
            return
        }
        let at = user.firstIndex(of: "@")
        let name = at.map { String(user[..<$0]) } ?? user
        let reference = at.map { String(user[user.index(after: $0)...]) }
        let resolved: String?
        switch fromServerName {
        case .none:
            resolved = await self.registry.tenantID(forUser: reference)
        case .nobody:
            throw TenantError.wrongPass
        case .tenant(let id):
            // A plain name is a user of the server name's tenant; `user@tenant` must name that
            // same tenant: another tenant's credential is WRONGPASS here.
            if let reference {
                guard await self.registry.tenantID(forUser: reference) == id else { throw TenantError.wrongPass }
            }
            resolved = id
        }
        guard Names.isValidUserName(name), let id = resolved else { throw TenantError.wrongPass }
        // The catalog's keys first: a wrong token never opens a tenant (no file, no descriptor,
        // no memory), and an anonymous client learns nothing of it.
        let tokenHash = Tokens.hash(token)
        guard await self.registry.mayAuthenticate(id: id, user: name, tokenHash: tokenHash) else {
            throw TenantError.wrongPass
        }
        let tenant: Tenant
        do {
            tenant = try await self.registry.tenant(id: id)
        } catch let error as TenantError where error.kind == .notFound {
            throw TenantError.wrongPass
        } catch let error as TenantError where error.kind == .storageFailed {
            // The details (file, offset) are for the operator, not for a client that has not authenticated.
            self.logger.error("AUTH to tenant \(id) refused: \(error.message)")
            throw TenantError.ioError("tenant is unavailable: its log is damaged or unreadable; the operator is told")
        }
        session.principal = try await tenant.authenticate(user: name, token: token)
        session.setContext(tenant, id: id)
    }

    /// A client name as Redis takes one: printable ASCII without spaces, here at most 256 bytes.
    static func clientName(_ name: String) throws -> String {
        guard name.utf8.count <= 256, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw CommandError("Client names cannot contain spaces, newlines or special characters.")
        }
        return name
    }

    func client(_ arguments: Arguments, session: inout Session) throws -> RESPValue {
        switch arguments.keyword(0) {
        case "SETNAME":
            try arguments.expect(2...2, for: "client|setname")
            session.clientName = try Self.clientName(arguments[1])
            return .ok
        case "GETNAME":
            return session.clientName.map { .bulkString($0) } ?? .null
        case "ID":
            return .integer(session.id)
        case "SETINFO":
            try arguments.expect(3...3, for: "client|setinfo")
            return .ok
        default:
            throw CommandError("unknown subcommand '\(arguments[0].prefix(64))'. Try CLIENT HELP.")
        }
    }

    func use(_ arguments: Arguments, principal: Principal, session: inout Session) async throws -> RESPValue {
        let reference = arguments[0]
        guard case .operator = principal else {
            // In single-tenant mode anyone may USE the one tenant there is.
            if await self.registry.userMayUse(reference) { return .ok }
            throw TenantError.noPermission("USE is for the operator; a user's tenant is the one it authenticated to")
        }
        let (tenant, id) = try await self.registry.tenantForOperator(reference: reference)
        session.setContext(tenant, id: id)
        return .ok
    }
}
