import Logging
import NIOCore
import RESP
import Synchronization
import TenantEngine
import TenantMetrics

/// What a connection needs to run the hot commands synchronously, in its channel handler, on its
/// tenant's event loop: the connection's task hands it to the handler (with the marker that says
/// every request it took is answered) when the session allows it.
///
/// A lane exists only for an authenticated connection with a tenant context placed on the
/// connection's own loop, not subscribed, without fair shares; everything else about the
/// session (AUTH, the context, subscriptions) changes only on the connection's task.
///
/// A class: the handler reads it on every request, and one reference is one retain.
///
/// When the tenant is on another loop than the connection (`loop` is the tenant's), the handler
/// sends each read's run of hot commands there in one hop (``RemoteRun``) and takes the replies
/// back in one hop, instead of a task's hop per request.
final class SyncLane: Sendable {
    let connectionID: Int64
    let tenant: Tenant
    let tenantID: String
    let principal: Principal
    let version: RESPVersion
    /// The tenant's event loop.
    let loop: any EventLoop

    init(
        connectionID: Int64,
        tenant: Tenant,
        tenantID: String,
        principal: Principal,
        version: RESPVersion,
        loop: any EventLoop
    ) {
        self.connectionID = connectionID
        self.tenant = tenant
        self.tenantID = tenantID
        self.principal = principal
        self.version = version
        self.loop = loop
    }
}

/// What a hot command gives the handler.
enum HotOutcome {
    /// The reply.
    case reply(RESPValue)
    /// A POST accepted into its log's buffer: answered once the loop's turn wrote it.
    case post(PostTicket)
}

extension CommandDispatcher {
    /// Runs a hot command on `lane`, with the checks ``handle(_:session:)`` makes of it (arity;
    /// AUTH, the tenant context and subscribed mode hold by the lane's making), counted and logged
    /// as there, its error counted once.
    /// - Returns: nil when the command's form is not for the lane (it then runs as usual).
    func runHot(_ spec: CommandSpec, _ words: [ByteBuffer], lane: SyncLane) -> HotOutcome? {
        guard let hot = spec.hot else { return nil }
        let start = LatencyHistogram.now()
        let outcome: HotOutcome
        do {
            guard spec.arity.contains(words.count - 1) else { throw CommandError.wrongArity(spec.name) }
            guard let ran = try hot(self, words, lane) else { return nil }
            outcome = ran
            if self.logsEveryCommand {
                self.logCommand(spec.name, connection: lane.connectionID, tenantID: lane.tenantID, error: nil)
            }
        } catch {
            if self.logsFailedCommands || (error as? TenantError)?.kind == .storageFailed {
                self.logCommand(spec.name, connection: lane.connectionID, tenantID: lane.tenantID, error: error)
            }
            outcome = .reply(.reply(for: error))
        }
        ServerMetrics.command(spec)
        ServerStats.shared.laneCommands.wrappingAdd(1, ordering: .relaxed)
        spec.latency.record(since: start)
        return outcome
    }

    /// POST on the lane: the record goes into the log's buffer now, the reply once it is written.
    /// Its two words are decoded straight to strings (the arity is checked), with no array of
    /// arguments.
    func post(_ words: [ByteBuffer], lane: SyncLane) throws -> HotOutcome? {
        let room = try Arguments.word(words[1])
        let text = try Arguments.word(words[2])
        return .post(try lane.tenant.postOnLoop(lane.principal, room: room, text: text))
    }

    /// HISTORY on the lane.
    func history(_ words: [ByteBuffer], lane: SyncLane) throws -> HotOutcome? {
        let arguments = try Arguments(words)
        let options = try Self.historyOptions(arguments)
        let page = try lane.tenant.historyPageOnLoop(
            lane.principal,
            room: arguments[0],
            after: options.after,
            before: options.before,
            limit: options.limit
        )
        return .reply(.encoded(Self.encodeHistory(page)))
    }

    /// ROOMS on the lane.
    func rooms(_ arguments: Arguments, lane: SyncLane) throws -> RESPValue {
        let (after, limit) = try arguments.page(from: 0)
        let rooms = try lane.tenant.roomsOnLoop(lane.principal, after: after, limit: limit ?? Tenant.maxRoomsPage)
        return Self.encodeRooms(rooms)
    }

    /// WHOAMI on the lane.
    func whoami(_ lane: SyncLane) throws -> RESPValue {
        let role = try lane.tenant.roleNameOnLoop(of: lane.principal)
        return .array([.bulkString(lane.tenantID), .bulkString(lane.principal.displayName), .bulkString(role)])
    }

    /// Whether the lane takes a POST's or HISTORY's words: not a path-form room.
    @Sendable static func laneTakesRoom(_ words: [ByteBuffer]) -> Bool {
        words.count < 2 || !Self.isPathForm(words[1])
    }

    /// Whether a room argument is in the path form, which the lane leaves to the usual path (it
    /// may name another tenant).
    static func isPathForm(_ room: ByteBuffer) -> Bool {
        room.withUnsafeReadableBytes { bytes in
            bytes.count >= Self.pathPrefix.count
                && Self.pathPrefix.indices.allSatisfy { bytes[$0] == Self.pathPrefix[$0] }
        }
    }

    private static let pathPrefix = Array("/tenant/".utf8)
}
