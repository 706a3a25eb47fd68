import Testing

@testable import TenantServer

/// ``LaneRouting`` alone: each rule of who runs a connection's next request, as actions.
@Suite("Lane routing")
struct LaneRoutingTests {
    final class Lane {}
    typealias Routing = LaneRouting<Lane>
    typealias Pending = Routing.Pending

    /// A hot command as the handler describes it, from the command table's own spec.
    static func hot(_ name: String, tenantIsHere: Bool = true, joinsGathered: Bool = true) -> Routing.Hot {
        let spec = CommandTable.byName[name]!
        precondition(spec.hot != nil, "\(name) is a hot command")
        return Routing.Hot(
            settlesFirst: spec.settlesFirst,
            tenantIsHere: tenantIsHere || !spec.readsTenant,
            joinsGathered: joinsGathered
        )
    }

    static let post = hot("POST")
    static let history = hot("HISTORY")
    static let ping = hot("PING")
    static let remotePost = hot("POST", tenantIsHere: false)
    static let remoteHistory = hot("HISTORY", tenantIsHere: false)

    /// A routing whose task answered its first request and gave it `lane`.
    static func onLane(_ lane: Lane) -> Routing {
        var routing = Routing()
        #expect(routing.route(nil, isHotName: false, pending: Pending()) == .handOver(count: 1))
        #expect(routing.taskIsIdle(handed: 1, lane: lane) == .resume)
        return routing
    }

    @Test func withoutALaneEveryRequestGoesToTheTaskCountedInOrder() {
        var routing = Routing()
        #expect(routing.lane == nil)
        // Hot names too: there is no lane to run them on.
        #expect(routing.route(nil, isHotName: true, pending: Pending()) == .handOver(count: 1))
        #expect(routing.route(nil, isHotName: false, pending: Pending()) == .handOver(count: 2))
        #expect(routing.route(nil, isHotName: true, pending: Pending()) == .handOver(count: 3))
        guard case .handedOver(3, fromLane: false) = routing.state else {
            Issue.record("\(routing.state)")
            return
        }
    }

    @Test func onlyTheMarkerForTheLastRequestHandedOverGivesTheLaneBack() {
        let lane = Lane()
        var routing = Routing()
        _ = routing.route(nil, isHotName: false, pending: Pending())
        _ = routing.route(nil, isHotName: false, pending: Pending())
        #expect(routing.taskIsIdle(handed: 1, lane: lane) == .stale, "the task still has the second")
        #expect(routing.lane == nil)
        #expect(routing.taskIsIdle(handed: 3, lane: lane) == .stale, "a count it never handed")
        #expect(routing.taskIsIdle(handed: 2, lane: lane) == .resume)
        #expect(routing.lane === lane)
        #expect(routing.taskIsIdle(handed: 2, lane: nil) == .stale, "a repeated marker changes nothing")
        #expect(routing.lane === lane)
    }

    @Test func hotCommandsRunOnTheLaneAndTheRestGoToTheTaskOnceThePostsAreAnswered() {
        let lane = Lane()
        var routing = Self.onLane(lane)
        #expect(routing.route(Self.post, isHotName: true, pending: Pending()) == .runOnLane)
        #expect(routing.route(Self.post, isHotName: true, pending: Pending(posts: 3)) == .runOnLane, "POSTs pipeline")
        #expect(routing.route(Self.ping, isHotName: true, pending: Pending(posts: 3)) == .runOnLane)
        #expect(routing.route(Self.history, isHotName: true, pending: Pending(posts: 1)) == .hold, "reads its POSTs")
        #expect(routing.route(Self.history, isHotName: true, pending: Pending()) == .runOnLane)
        // USAGE, say: it waits for the lane's POSTs, then the task has it; the lane waits for it.
        #expect(routing.route(nil, isHotName: false, pending: Pending(posts: 1)) == .hold)
        #expect(routing.lane === lane, "held, not handed over")
        #expect(routing.route(nil, isHotName: false, pending: Pending()) == .handOver(count: 2))
        #expect(routing.lane == nil)
        // A POST after it waits for the task's marker, then runs on the lane again.
        #expect(routing.route(nil, isHotName: true, pending: Pending()) == .hold)
        #expect(routing.taskIsIdle(handed: 2, lane: lane) == .resume)
        #expect(routing.route(Self.post, isHotName: true, pending: Pending()) == .runOnLane)
    }

    @Test func aHotNameTheLaneDoesNotTakeGoesToTheTaskWithoutWaitingForAMarker() {
        // A path-form POST, or one to a closed tenant: a hot name, but not for the lane.
        var routing = Self.onLane(Lane())
        #expect(routing.route(nil, isHotName: true, pending: Pending(posts: 1)) == .hold, "after the lane's POSTs")
        #expect(routing.route(nil, isHotName: true, pending: Pending()) == .handOver(count: 2))
        guard case .handedOver(2, fromLane: true) = routing.state else {
            Issue.record("\(routing.state)")
            return
        }
    }

    @Test func aReadOfATenantOnAnotherLoopWaitsForTheLanesOwnPostsFirst() {
        var routing = Self.onLane(Lane())
        #expect(routing.route(Self.remoteHistory, isHotName: true, pending: Pending(posts: 1)) == .hold)
        #expect(routing.route(Self.remotePost, isHotName: true, pending: Pending(posts: 1)) == .gather)
    }

    @Test func aCommandTheLaneDeclinesGoesToTheTaskAfterThePosts() {
        var routing = Self.onLane(Lane())
        #expect(routing.declined(pending: Pending(posts: 2)) == .hold)
        #expect(routing.declined(pending: Pending()) == .handOver(count: 2))
        guard case .handedOver(2, fromLane: true) = routing.state else {
            Issue.record("\(routing.state)")
            return
        }
    }

    @Test func aTenantOnAnotherLoopGetsItsCommandsInOneBatchInOrder() {
        var routing = Self.onLane(Lane())
        #expect(routing.route(Self.remotePost, isHotName: true, pending: Pending()) == .gather)
        #expect(
            routing.route(Self.remotePost, isHotName: true, pending: Pending(gathered: 1, gatheredPost: true))
                == .gather
        )
        // A read after a gathered POST waits for its reply; one after reads only goes along.
        #expect(
            routing.route(Self.remoteHistory, isHotName: true, pending: Pending(gathered: 2, gatheredPost: true))
                == .hold
        )
        #expect(routing.route(Self.remoteHistory, isHotName: true, pending: Pending(gathered: 2)) == .gather)
        // PING runs here, but not before what was gathered ahead of it.
        #expect(routing.route(Self.ping, isHotName: true, pending: Pending(gathered: 1)) == .hold)
        #expect(routing.route(Self.ping, isHotName: true, pending: Pending()) == .runOnLane)
        // The task waits for the gathered commands too.
        #expect(routing.route(nil, isHotName: false, pending: Pending(gathered: 1)) == .hold)
        // While a batch is away nothing runs, on the lane or on the task.
        let away = Pending(remoteInFlight: true)
        for hot in [Self.post, Self.ping, Self.history, Self.remotePost] {
            #expect(routing.route(hot, isHotName: true, pending: away) == .hold)
        }
        #expect(routing.route(nil, isHotName: false, pending: away) == .hold)
        #expect(routing.lane != nil, "nothing was handed over")
    }

    @Test func aConnectionThatNeverHadALaneNeverWaitsForOne() {
        var routing = Routing()
        _ = routing.route(nil, isHotName: false, pending: Pending())
        // Not from a lane: a hot name goes to the task at once, without waiting for the marker.
        #expect(routing.route(nil, isHotName: true, pending: Pending()) == .handOver(count: 2))
        #expect(routing.taskIsIdle(handed: 2, lane: nil) == .resume)
        #expect(routing.route(Self.post, isHotName: true, pending: Pending()) == .handOver(count: 3), "no lane")
    }

    /// Path-form rooms: one connection's requests name tenants on several loops.
    @Test func requestsForTenantsOnSeveralLoopsKeepTheirOrder() {
        var routing = Self.onLane(Lane())
        let gatheredPost = Pending(gathered: 1, gatheredPost: true)
        // A POST to a tenant here after one gathered for another loop: its reply would go out
        // before the gathered one's, so it waits for it.
        #expect(routing.route(Self.post, isHotName: true, pending: gatheredPost) == .hold)
        // So does a PING (it reads no tenant, so it is "here").
        #expect(routing.route(Self.ping, isHotName: true, pending: gatheredPost) == .hold)
        // A POST to a tenant on the same other loop joins the batch; one on a third loop waits
        // for the batch's replies and starts the next.
        #expect(routing.route(Self.remotePost, isHotName: true, pending: gatheredPost) == .gather)
        let thirdLoop = Self.hot("POST", tenantIsHere: false, joinsGathered: false)
        #expect(routing.route(thirdLoop, isHotName: true, pending: gatheredPost) == .hold)
        // A POST to a tenant on another loop while POSTs of this loop wait for their log: it does
        // not read them, and its reply comes back after theirs.
        #expect(routing.route(Self.remotePost, isHotName: true, pending: Pending(posts: 3)) == .gather)
        // Once the batch's replies are back and nothing is gathered, the third loop's goes.
        #expect(routing.route(thirdLoop, isHotName: true, pending: Pending()) == .gather)
    }
}
