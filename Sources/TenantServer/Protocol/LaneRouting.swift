/// Who runs a connection's next request, as a state machine of its own: ``RESPRequestHandler``
/// asks it for every request it parses and for every marker the connection's task writes, and
/// does what the returned action says. It holds no channel, no tenant and no clock, so each of
/// its rules is tested alone (`LaneRoutingTests`); `Lane` is ``SyncLane`` in the server.
///
/// The rules it keeps:
/// - the handler and the connection's task never run requests of one connection at once: once a
///   request went to the task, nothing runs on the lane until the task's marker says it answered
///   every request handed to it;
/// - a command that reads the tenant waits for the connection's POSTs still waiting for the
///   log, and a command the lane does not take waits for them too (the task sees what they did);
/// - requests gathered for tenants on another loop go there in one hop, in order: a local
///   command after them, one for a third loop, or a read after a gathered POST, waits until
///   their replies are back.
struct LaneRouting<Lane: AnyObject> {
    /// Who runs the connection's requests now.
    enum State {
        /// The handler runs hot commands itself when it has a lane; the rest go to the task.
        case synchronous(Lane?)
        /// The task has requests up to this count; nothing runs on the lane until it says it
        /// answered them. `fromLane`: the connection had a lane before, so a hot command waits
        /// for the task's marker to run on it (a pipeline of POSTs with one USER ADD in the middle
        /// goes back to the lane after it); otherwise everything goes to the task.
        case handedOver(Int, fromLane: Bool)
    }

    /// A parsed command the lane could run, as the handler found it.
    struct Hot {
        /// It waits for the connection's POSTs first (``CommandSpec/settlesFirst``).
        var settlesFirst: Bool
        /// It runs on this connection's loop: it reads no tenant (``CommandSpec/readsTenant``),
        /// or the tenant it works in is placed here.
        var tenantIsHere: Bool
        /// When it is not here: its tenant's loop is the one the gathered commands go to (or
        /// none are gathered).
        var joinsGathered = true
    }

    /// What the lane has on its hands besides the request being routed.
    struct Pending {
        /// POSTs run on the lane whose log is not written yet.
        var posts = 0
        /// Hot commands gathered for another loop in this parse, not sent yet.
        var gathered = 0
        /// Whether a POST is among them.
        var gatheredPost = false
        /// A batch sent to another loop whose replies are not back.
        var remoteInFlight = false
    }

    /// What to do with a request.
    enum Action: Equatable {
        /// Run it on the lane now (``CommandDispatcher/runHot(_:_:lane:)``).
        case runOnLane
        /// Add it to the batch for its tenant's loop.
        case gather
        /// Keep it, stop parsing, and route it again when the lane resumes.
        case hold
        /// Hand it to the connection's task: it is the `count`-th the task gets.
        case handOver(count: Int)
    }

    /// What to do with the task's marker.
    enum MarkerAction: Equatable {
        /// The task answered everything handed to it: the lane goes on (resume what waited, or
        /// parse what the gate held back).
        case resume
        /// An older marker: the task still has requests handed after it.
        case stale
    }

    private(set) var state = State.synchronous(nil)
    /// The requests handed to the task so far.
    private(set) var handed = 0

    /// The lane, when the handler may run hot commands itself now.
    var lane: Lane? {
        guard case .synchronous(let lane) = self.state else { return nil }
        return lane
    }

    /// Routes a request. `hot` is nil for a request the lane cannot run (not a hot command,
    /// a form it leaves to the task, no lane, a closed tenant); `isHotName` says whether its
    /// name is a hot command's all the same.
    mutating func route(_ hot: Hot?, isHotName: Bool, pending: Pending) -> Action {
        // Nothing runs before a remote run's replies are back.
        if pending.remoteInFlight { return .hold }
        if let hot, self.lane != nil {
            if hot.settlesFirst && pending.posts > 0 { return .hold }
            // After commands gathered for another loop: in order, once they are back.
            if hot.tenantIsHere && pending.gathered > 0 { return .hold }
            if !hot.tenantIsHere {
                // One loop per batch: a tenant on a third loop goes in the next one.
                if !hot.joinsGathered && pending.gathered > 0 { return .hold }
                // A read after a gathered POST goes in the next batch, once the POST's reply
                // (sent only when it is durable) is back.
                if hot.settlesFirst && pending.gatheredPost { return .hold }
                return .gather
            }
            return .runOnLane
        }
        return self.handOver(isHotName: isHotName, pending: pending)
    }

    /// Routes a request the lane was asked to run and declined (its form is not for the lane).
    mutating func declined(pending: Pending) -> Action {
        self.handOver(isHotName: false, pending: pending)
    }

    private mutating func handOver(isHotName: Bool, pending: Pending) -> Action {
        // The task runs it once the lane's POSTs are answered (it sees what they did).
        if pending.posts > 0 || pending.gathered > 0 { return .hold }
        let fromLane: Bool
        switch self.state {
        case .synchronous(let lane): fromLane = lane != nil
        case .handedOver(_, let wasOnLane):
            // Back to the lane once the task answered what it has.
            if wasOnLane && isHotName { return .hold }
            fromLane = wasOnLane
        }
        self.handed += 1
        self.state = .handedOver(self.handed, fromLane: fromLane)
        return .handOver(count: self.handed)
    }

    /// The task's marker: every request up to the `handed`-th is answered, and `lane` is what
    /// the session allows from there.
    mutating func taskIsIdle(handed count: Int, lane: Lane?) -> MarkerAction {
        guard case .handedOver(let handed, _) = self.state, handed == count else { return .stale }
        self.state = .synchronous(lane)
        return .resume
    }
}
