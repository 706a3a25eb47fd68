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
/// A lane exists only for an authenticated connection, not subscribed, without fair shares, whose
/// tenant context (if it has one: the operator may have none) is placed on an event loop;
/// everything else about the session (AUTH, the context, subscriptions) changes only on the
/// connection's task.
///
/// A class: the handler reads it on every request, and one reference is one retain.
///
/// Each hot command works in a tenant (``resolve(_:_:)``): the context, or the one a path-form
/// room (`/tenant/<id>/<room>`) names. When it is on another loop than the connection, the
/// handler sends each read's run of hot commands there in one hop (``RemoteRun``) and takes the
/// replies back in one hop, instead of a task's hop per request.
final class SyncLane: Sendable {
    /// What the lane does with a room in the path form.
    enum PathForm: Sendable {
        /// `TENANT_ID_SOURCE` does not allow it: `/tenant/...` is a plain room name.
        case plain
        /// Resolved among the open tenants, as the connection's task resolves it; a tenant not
        /// open (the task opens it), or a credential not valid there (the task refuses it), goes
        /// to the task.
        case resolve(OpenTenants)
        /// Every path-form room goes to the task (single-tenant mode, which checks the id).
        case decline
    }

    let connectionID: Int64
    /// The tenant context: nil for the operator without one.
    let tenant: Tenant?
    let tenantID: String?
    let principal: Principal
    let version: RESPVersion
    let pathForm: PathForm
    /// The connection's subscriptions, and where its tenants deliver (SUBSCRIBE on the lane).
    let subscriber: ConnectionSubscriber

    init(
        connectionID: Int64,
        tenant: Tenant?,
        tenantID: String?,
        principal: Principal,
        version: RESPVersion,
        pathForm: PathForm,
        subscriber: ConnectionSubscriber
    ) {
        self.subscriber = subscriber
        self.connectionID = connectionID
        self.tenant = tenant
        self.tenantID = tenantID
        self.principal = principal
        self.version = version
        self.pathForm = pathForm
    }

    /// Where a hot command runs.
    enum Resolution {
        /// Anywhere: it reads no tenant (PING, ECHO).
        case anywhere
        /// In this tenant, on its loop.
        case tenant(LaneTarget)
        /// Not on the lane: the connection's task runs it (and gives its error, if any).
        case declined
    }

    /// The tenant `spec` with `words` works in: the context, or the one a path-form room names,
    /// as ``CommandDispatcher/target(room:principal:session:)`` finds it.
    func resolve(_ spec: CommandSpec, _ words: [ByteBuffer]) -> Resolution {
        guard spec.readsTenant else { return .anywhere }
        return self.resolve(room: spec.takesRoom && words.count >= 2 ? words[1] : nil)
    }

    /// The tenant a command works in when its room is `room` (nil: it names none).
    func resolve(room: ByteBuffer?) -> Resolution {
        if let room, Self.isPathForm(room) {
            switch self.pathForm {
            case .plain:
                break
            case .decline:
                return .declined
            case .resolve(let open):
                guard let (id, room) = Self.splitPath(room) else { return .declined }
                if id == self.tenantID, let tenant = self.tenant {
                    return tenant.isClosed ? .declined : .tenant(LaneTarget(tenant: tenant, pathRoom: room))
                }
                // A user's credential is valid in its own tenant only: the task says so.
                guard case .operator = self.principal, let tenant = open[id], !tenant.isClosed else { return .declined }
                return .tenant(LaneTarget(tenant: tenant, pathRoom: room))
            }
        }
        guard let tenant = self.tenant, !tenant.isClosed else { return .declined }
        return .tenant(LaneTarget(tenant: tenant, pathRoom: nil))
    }

    /// Whether a room argument is in the path form.
    static func isPathForm(_ room: ByteBuffer) -> Bool {
        room.withUnsafeReadableBytes { bytes in
            bytes.count >= Self.pathPrefix.count
                && Self.pathPrefix.indices.allSatisfy { bytes[$0] == Self.pathPrefix[$0] }
        }
    }

    /// A path-form room's tenant id and room; nil when it is not well-formed (no `/` after the
    /// id, an id that is not one), which the task answers.
    static func splitPath(_ word: ByteBuffer) -> (id: String, room: ByteBuffer)? {
        let start = word.readerIndex + Self.pathPrefix.count
        let length = word.readableBytes - Self.pathPrefix.count
        guard let view = word.getSlice(at: start, length: length),
            let slash = view.readableBytesView.firstIndex(of: UInt8(ascii: "/"))
        else { return nil }
        let idLength = slash - view.readerIndex
        guard idLength >= 1, idLength <= 64,
            let id = view.getString(at: view.readerIndex, length: idLength), Names.isValidTenantID(id),
            let room = view.getSlice(at: slash + 1, length: view.writerIndex - slash - 1)
        else { return nil }
        return (id, room)
    }

    private static let pathPrefix = Array("/tenant/".utf8)
}

/// The tenant a hot command on the lane works in.
struct LaneTarget {
    let tenant: Tenant
    /// The room, when the command named it in the path form (`/tenant/<id>/` taken off).
    let pathRoom: ByteBuffer?

    /// The target of a command that reads a tenant (the lane resolves one for each).
    static func needed(_ target: LaneTarget?) throws -> LaneTarget {
        guard let target else { throw CommandError("internal error: no tenant resolved on the lane") }
        return target
    }
}

/// What a hot command gives the handler.
enum HotOutcome {
    /// The reply.
    case reply(RESPValue)
    /// A POST accepted into its log's buffer: answered once the loop's turn wrote it.
    case post(PostTicket)
    /// Its replies were delivered to the handler as it ran (SUBSCRIBE's, by its tenants).
    case delivered
}

extension CommandDispatcher {
    /// Runs a hot command on `lane`, with the checks ``handle(_:session:)`` makes of it (arity;
    /// AUTH, the tenant context and subscribed mode hold by the lane's making), counted and logged
    /// as there, its error counted once.
    ///
    /// Its latency runs from `clock` (0: from now) to its end, which `clock` is then set to: the
    /// commands of one read are timed back to back, one clock read each, the time between them
    /// (the next one's parsing) counted in the next.
    /// - Returns: nil when the command's form is not for the lane (it then runs as usual).
    func runHot(
        _ spec: CommandSpec,
        _ words: [ByteBuffer],
        lane: SyncLane,
        target: LaneTarget?,
        clock: inout UInt64
    ) -> HotOutcome? {
        guard let hot = spec.hot else { return nil }
        let start = clock != 0 ? clock : LatencyHistogram.now()
        let outcome: HotOutcome
        do {
            guard spec.arity.contains(words.count - 1) else { throw CommandError.wrongArity(spec.name) }
            guard let ran = try hot(self, words, lane, target) else { return nil }
            outcome = ran
            if self.logsEveryCommand {
                self.logCommand(
                    spec.name,
                    connection: lane.connectionID,
                    tenantID: target?.tenant.id ?? lane.tenantID,
                    error: nil
                )
            }
        } catch {
            if self.logsFailedCommands || (error as? TenantError)?.kind == .storageFailed {
                self.logCommand(
                    spec.name,
                    connection: lane.connectionID,
                    tenantID: target?.tenant.id ?? lane.tenantID,
                    error: error
                )
            }
            outcome = .reply(.reply(for: error))
        }
        ServerMetrics.command(spec)
        ServerStats.shared.laneCommands.wrappingAdd(1, ordering: .relaxed)
        let end = LatencyHistogram.now()
        spec.latency.record(nanoseconds: end > start ? end - start : 0)
        clock = end
        return outcome
    }

    /// POST on the lane: the record goes into the log's buffer now, the reply once it is written.
    /// Its two words are decoded straight to strings (the arity is checked), with no array of
    /// arguments.
    func post(_ words: [ByteBuffer], lane: SyncLane, target: LaneTarget) throws -> HotOutcome? {
        let room = try Arguments.word(target.pathRoom ?? words[1])
        let text = try Arguments.word(words[2])
        return .post(try target.tenant.postOnLoop(lane.principal, room: room, text: text))
    }

    /// HISTORY on the lane.
    func history(_ words: [ByteBuffer], lane: SyncLane, target: LaneTarget) throws -> HotOutcome? {
        let arguments = try Arguments(words)
        let options = try Self.historyOptions(arguments)
        let page = try target.tenant.historyPageOnLoop(
            lane.principal,
            room: try target.pathRoom.map(Arguments.word) ?? arguments[0],
            after: options.after,
            before: options.before,
            limit: options.limit
        )
        return .reply(.encoded(Self.encodeHistory(page)))
    }

    /// ROOMS on the lane.
    func rooms(_ arguments: Arguments, lane: SyncLane, target: LaneTarget) throws -> RESPValue {
        let (after, limit) = try arguments.page(from: 0)
        let rooms = try target.tenant.roomsOnLoop(
            lane.principal,
            after: after,
            limit: limit ?? EngineLimits.maxRoomsPage
        )
        return Self.encodeRooms(rooms)
    }

    /// SUBSCRIBE on the lane, on a RESP3 connection (RESP2's subscribed mode begins with a first
    /// subscription, and only the connection's task keeps it), every channel's tenant on this
    /// loop: each confirmation is delivered to the handler as its tenant subscribes, among the
    /// lane's replies. The same checks, in the same order, as ``subscribe(_:principal:session:)``.
    func subscribe(_ words: [ByteBuffer], lane: SyncLane, target: LaneTarget) throws -> HotOutcome? {
        guard lane.version == .resp3 else { return nil }
        var targets: [(channel: String, tenant: Tenant, room: ByteBuffer)] = []
        targets.reserveCapacity(words.count - 1)
        for index in 1..<words.count {
            var resolved = target
            if index > 1 {
                guard case .tenant(let other) = lane.resolve(room: words[index]),
                    let here = target.tenant.placement, other.tenant.isPlaced(on: here)
                else { return nil }
                resolved = other
            }
            targets.append((try Arguments.word(words[index]), resolved.tenant, resolved.pathRoom ?? words[index]))
        }
        let held = lane.subscriber.subscriptions
        var added: Set<String> = []
        var checked: [(channel: String, tenant: Tenant, room: String)] = []
        for (channel, tenant, roomWord) in targets {
            let room = try Arguments.word(roomWord)
            try self.checkSubscription(tenant, room: room, held: held, added: &added)
            checked.append((channel, tenant, room))
        }
        for (channel, tenant, room) in checked {
            try lane.subscriber.recording(
                .init(tenant: tenant, room: room, channel: channel),
                key: tenant.subscriptionKey(room: room)
            ) {
                try tenant.subscribeOnLoop(lane.principal, room: room, channel: channel, subscriber: lane.subscriber)
            }
        }
        return .delivered
    }

    /// WHOAMI on the lane.
    func whoami(_ lane: SyncLane, target: LaneTarget) throws -> RESPValue {
        let role = try target.tenant.roleNameOnLoop(of: lane.principal)
        return .array([.bulkString(target.tenant.id), .bulkString(lane.principal.displayName), .bulkString(role)])
    }
}
