/// What a connection's task is between commands, as a state machine of its own: ``Connection``
/// tells it what the session became after each command and after each batch, and does what the
/// returned actions say. It holds no channel, no queue and no tenant, so each of its rules is
/// tested alone (`ConnectionStateTests`); the handler's side is ``LaneRouting``.
///
/// The rules it keeps:
/// - the reply window widens once, when the connection first authenticates;
/// - the connection is registered under its tenant context (for the tenant's departure notices)
///   and, with fair shares on, charged to it, and both follow the context when it changes;
/// - the handler may run the next requests on a lane only after the task answered a batch, with
///   the session authenticated, not in RESP2's subscribed mode and not closing, and fair shares
///   off (a RESP3 connection with subscriptions keeps its lane: its pushes and replies meet in
///   the handler, ``PushSink``);
/// - closing is final: once a reply closes the connection, nothing else changes.
struct ConnectionState: Equatable {
    enum State: Equatable {
        /// Before AUTH: the anonymous limits apply.
        case anonymous
        /// Authenticated, in `context` (nil: the operator without one), `subscribedMode` when
        /// RESP2's subscribed mode holds (only pub/sub commands run).
        case authenticated(context: String?, subscribedMode: Bool)
        /// A reply closes the connection (QUIT, a protocol error, the tenant left this server).
        case closing
    }

    /// What the session is after a command.
    struct Session: Equatable {
        var authenticated: Bool
        var tenantID: String?
        /// RESP2's subscribed mode.
        var subscribedMode: Bool
        /// The connection closes after the reply.
        var closing: Bool
    }

    /// The connection's registration moves from one tenant context to another.
    struct ContextMove: Equatable {
        var from: String?
        var to: String?
    }

    /// What the connection does after a command, in this order.
    struct Actions: Equatable {
        /// Widen the reply window (and the gate's limits) to the authenticated ones.
        var authenticate = false
        /// Register the connection under this tenant context instead of the last one.
        var moveContext: ContextMove?
        /// Charge its requests to this tenant's account (fair shares): `.some(nil)` detaches.
        var charge: String??
    }

    /// Whether fair shares (`TENANT_FAIR_SHARES`) charge requests to their tenant.
    let fairShares: Bool
    private(set) var state = State.anonymous
    /// The context the connection is registered under.
    private(set) var registeredContext: String?
    /// The tenant its requests are charged to (fair shares only).
    private(set) var chargedTo: String?

    init(fairShares: Bool) {
        self.fairShares = fairShares
    }

    /// A command ran and left the session as `session`.
    mutating func commandRan(_ session: Session) -> Actions {
        var actions = Actions()
        if case .closing = self.state { return actions }
        if session.authenticated, case .anonymous = self.state { actions.authenticate = true }
        if self.registeredContext != session.tenantID {
            actions.moveContext = ContextMove(from: self.registeredContext, to: session.tenantID)
            self.registeredContext = session.tenantID
        }
        if self.fairShares && self.chargedTo != session.tenantID {
            actions.charge = .some(session.tenantID)
            self.chargedTo = session.tenantID
        }
        if session.closing {
            self.state = .closing
        } else if session.authenticated {
            self.state = .authenticated(context: session.tenantID, subscribedMode: session.subscribedMode)
        }
        return actions
    }

    /// Whether the handler may run the requests after the batch just answered on a lane (the
    /// lane's tenant, if any, must still be placed on a loop: ``Connection`` checks that).
    var allowsLane: Bool {
        guard !self.fairShares, case .authenticated(_, subscribedMode: false) = self.state else { return false }
        return true
    }
}
