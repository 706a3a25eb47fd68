import RESP
import TenantEngine

/// The state of one connection: protocol, identity, tenant context.
struct Session: Sendable {
    /// The connection's id, as HELLO and CLIENT ID report it.
    let id: Int64
    var version: RESPVersion = .resp2
    var principal: Principal?
    /// The tenant the connection works in (set through ``setContext(_:id:)``, which leases it).
    private(set) var tenantID: String?
    private(set) var tenant: Tenant?
    var clientName: String?
    /// The newest POST not yet known durable: any other command waits for it first, so a
    /// pipelined HISTORY sees the POSTs before it.
    var lastPost: (tenant: Tenant, ticket: PostTicket)?
    /// The client's address, for the signup rate limit and the AUTH throttle.
    let clientAddress: String
    /// Failed authentications on this connection.
    var authFailures = 0
    /// Close the connection once the current reply is sent.
    var closeAfterReply = false
    /// Where tenants deliver this connection's pub/sub events.
    let subscriber: ConnectionSubscriber
    /// The tenant the command running now works in when it names another than the context
    /// (`/tenant/<id>/<room>`): its request and reply are counted there.
    let pathTarget = PathTarget()

    /// The connection's transport: TLS or not, and the server name a TLS client asked for.
    let transport: ConnectionTransport

    init(
        id: Int64,
        clientAddress: String,
        transport: ConnectionTransport = ConnectionTransport(isTLS: false),
        subscriber: ConnectionSubscriber
    ) {
        self.id = id
        self.clientAddress = clientAddress
        self.transport = transport
        self.subscriber = subscriber
    }

    /// The authenticated principal (the dispatcher runs commands that need one only after AUTH).
    func authenticated() throws -> Principal {
        guard let principal = self.principal else { throw ServerError(.noAuth, "Authentication required.") }
        return principal
    }

    /// The tenant context.
    /// - Throws: NOTENANT without one.
    func contextTenant() throws -> Tenant {
        guard let tenant = self.tenant else { throw Self.noTenant }
        return tenant
    }

    static let noTenant = ServerError(
        .noTenant,
        "tenant context required: AUTH as a tenant's user, or USE <tenant> first"
    )

    /// Moves the context to the tenant's open instance when the one held was closed since
    /// (passivated when idle, or reopened by the operator).
    /// - Throws: MIGRATED once the tenant was handed to another server: the connection is told
    ///   and closed.
    mutating func refreshContext(from registry: TenantRegistry) async throws {
        guard let tenant = self.tenant, tenant.isClosed, let id = self.tenantID else { return }
        let fresh: Tenant
        do {
            fresh = try await registry.tenant(id: id)
        } catch let error as TenantError where error.kind == .migrated {
            self.closeAfterReply = true
            throw error
        } catch {
            return
        }
        self.setContext(fresh, id: id)
    }

    /// Makes `tenant` the connection's context, holding a lease on it (a held tenant is never
    /// passivated) and giving back the lease on the previous one.
    mutating func setContext(_ tenant: Tenant?, id: String?) {
        if let tenant, tenant === self.tenant { return }
        self.tenant?.release()
        tenant?.retain()
        self.tenant = tenant
        self.tenantID = id
    }

    /// RESP2 connections with subscriptions take only pub/sub commands, as Redis's do.
    /// (The subscriptions are the subscriber's: the lane subscribes too.)
    var isInSubscribedMode: Bool { self.version == .resp2 && self.subscriber.count > 0 }
}

/// What a command asks the connection to do.
enum CommandOutcome: Sendable {
    /// Send this reply.
    case reply(RESPValue)
    /// Send the seq once the POST is durable.
    case post(Tenant, PostTicket)
    /// Send this reply, then close the connection.
    case replyAndClose(RESPValue)
    /// Nothing to send: the replies were delivered through the subscriber.
    case delivered
}

/// An error in the form of a command: `-ERR`.
struct CommandError: Error {
    let message: String

    init(_ message: String) {
        self.message = message
    }

    static func wrongArity(_ command: String) -> CommandError {
        CommandError("wrong number of arguments for '\(command.lowercased())' command")
    }

    static let syntax = CommandError("syntax error")
}

extension RESPValue {
    /// The one place where an error becomes its contract reply; it is counted by its code.
    static func reply(for error: any Error) -> RESPValue {
        let (code, message) = Self.contractError(error)
        ServerMetrics.error(code: code)
        return .error("\(code.rawValue) \(message)")
    }

    /// The contract's code and the human message of an error.
    static func contractError(_ error: any Error) -> (ReplyCode, String) {
        switch error {
        case let error as TenantError: return (ReplyCode(error.kind), error.message)
        case let error as CommandError: return (.err, error.message)
        case let error as ServerError: return (error.code, error.message)
        default: return (.err, "internal error: \(error)")
        }
    }
}

/// The tenant a path-form command resolved to, set by the dispatcher and taken by the connection
/// once the command is answered. Only the connection's own task touches it, one command at a time.
final class PathTarget: @unchecked Sendable {
    private var tenant: Tenant?

    func set(_ tenant: Tenant) { self.tenant = tenant }

    /// The tenant set, if any, left set.
    var current: Tenant? { self.tenant }

    /// The tenant set, if any, cleared.
    func take() -> Tenant? {
        defer { self.tenant = nil }
        return self.tenant
    }
}
