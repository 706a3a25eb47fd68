import Testing

@testable import TenantServer

/// ``ConnectionState`` alone: what a connection's task does after each command, as actions.
@Suite("Connection states")
struct ConnectionStateTests {
    typealias Session = ConnectionState.Session

    static func session(
        authenticated: Bool = true,
        tenant: String? = nil,
        subscribedMode: Bool = false,
        closing: Bool = false
    ) -> Session {
        Session(authenticated: authenticated, tenantID: tenant, subscribedMode: subscribedMode, closing: closing)
    }

    @Test func anonymousCommandsChangeNothingAndGiveNoLane() {
        var state = ConnectionState(fairShares: false)
        #expect(state.commandRan(Self.session(authenticated: false)) == ConnectionState.Actions())
        #expect(state.state == .anonymous)
        #expect(!state.allowsLane, "before AUTH every request goes to the task")
    }

    @Test func theReplyWindowWidensOnceWhenTheConnectionFirstAuthenticates() {
        var state = ConnectionState(fairShares: false)
        let first = state.commandRan(Self.session(tenant: "acme"))
        #expect(first.authenticate)
        #expect(first.moveContext == ConnectionState.ContextMove(from: nil, to: "acme"))
        #expect(first.charge == nil, "no fair shares: nothing is charged")
        #expect(state.state == .authenticated(context: "acme", subscribedMode: false))
        #expect(state.allowsLane)
        // The next command in the same context: nothing to do.
        #expect(state.commandRan(Self.session(tenant: "acme")) == ConnectionState.Actions())
    }

    @Test func theRegistrationFollowsTheContext() {
        var state = ConnectionState(fairShares: false)
        _ = state.commandRan(Self.session())
        #expect(state.registeredContext == nil, "the operator without a context")
        #expect(state.allowsLane, "the operator gets a lane for path-form rooms")
        #expect(state.commandRan(Self.session(tenant: "a")).moveContext == .init(from: nil, to: "a"))
        #expect(state.commandRan(Self.session(tenant: "b")).moveContext == .init(from: "a", to: "b"))
        #expect(state.registeredContext == "b")
        #expect(state.commandRan(Self.session(tenant: nil)).moveContext == .init(from: "b", to: nil))
    }

    @Test func withFairSharesRequestsAreChargedToTheContextAndThereIsNoLane() {
        var state = ConnectionState(fairShares: true)
        let first = state.commandRan(Self.session(tenant: "a"))
        #expect(first.charge == .some("a"))
        #expect(!state.allowsLane, "fair shares run every request on the task")
        #expect(state.commandRan(Self.session(tenant: "a")).charge == nil, "charged to it already")
        #expect(state.commandRan(Self.session(tenant: "b")).charge == .some("b"))
        let detached = state.commandRan(Self.session(tenant: nil))
        #expect(detached.charge == .some(nil), "no context: detached")
        #expect(state.chargedTo == nil)
    }

    @Test func aConnectionInSubscribedModeHasNoLaneUntilItsLastSubscriptionEnds() {
        var state = ConnectionState(fairShares: false)
        _ = state.commandRan(Self.session(tenant: "a"))
        #expect(state.allowsLane)
        _ = state.commandRan(Self.session(tenant: "a", subscribedMode: true))
        #expect(!state.allowsLane)
        #expect(state.state == .authenticated(context: "a", subscribedMode: true))
        _ = state.commandRan(Self.session(tenant: "a"))
        #expect(state.allowsLane)
    }

    @Test func closingIsFinal() {
        var state = ConnectionState(fairShares: false)
        _ = state.commandRan(Self.session(tenant: "a"))
        _ = state.commandRan(Self.session(tenant: "a", closing: true))
        #expect(state.state == .closing)
        #expect(!state.allowsLane, "no lane for a connection about to close")
        // Nothing after it changes a thing (a command that raced the close).
        #expect(state.commandRan(Self.session(tenant: "b")) == ConnectionState.Actions())
        #expect(state.state == .closing)
        #expect(state.registeredContext == "a", "unregistered once, when the connection ends")
        // QUIT before AUTH: closing, never authenticated.
        var anonymous = ConnectionState(fairShares: false)
        _ = anonymous.commandRan(Self.session(authenticated: false, closing: true))
        #expect(anonymous.commandRan(Self.session(tenant: "a")) == ConnectionState.Actions())
        #expect(!anonymous.allowsLane)
    }
}
