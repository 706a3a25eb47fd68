import Synchronization

/// The serial executor a tenant runs on: one per tenant under the `database` and `schema`
/// strategies, one for all of them under `shared` (one store, one serialisation domain).
///
/// In the server it is an event loop (``TenantPlacement``): the tenant lives on the loop that
/// placed it until it closes, and a connection on that loop runs the hot commands inside its
/// channel handler, with `assumeIsolated`, no task and no `await` (shard per core, as Seastar,
/// ScyllaDB and Dragonfly place their shards). Without a placement (tools, tests, the engine on
/// its own) it is a default actor's executor (a lane), which a calling task takes over on its own
/// thread.
public final class TenantExecutor: Sendable {
    /// A default actor, only for its executor.
    private actor Lane {}

    private enum Kind: Sendable {
        case lane(Lane)
        case placed(any SerialExecutor, TenantPlacement.Seat)
    }

    private let kind: Kind

    /// Creates an executor of its own (a lane).
    public init() {
        self.kind = .lane(Lane())
    }

    /// An executor on `serial`, holding `seat` until it is released.
    init(on serial: any SerialExecutor, seat: TenantPlacement.Seat) {
        self.kind = .placed(serial, seat)
    }

    /// The executor's reference, for an actor's `unownedExecutor`.
    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        switch self.kind {
        case .lane(let lane): return lane.unownedExecutor
        case .placed(let serial, _): return serial.asUnownedSerialExecutor()
        }
    }

    /// The executor it was placed on (an event loop), nil for a lane.
    public var placedOn: (any SerialExecutor)? {
        guard case .placed(let serial, _) = self.kind else { return nil }
        return serial
    }

    /// True when it runs on `executor` (the same object).
    public func runs(on executor: any SerialExecutor) -> Bool {
        guard case .placed(let serial, _) = self.kind else { return false }
        return serial === executor
    }
}

/// Places tenants on the server's event loops, where each stays until it closes.
///
/// Two rules (``Rule``): when connections move to their tenant's loop, every tenant goes to the
/// loop with the fewest tenants (the opener's loop among equals), so that tenants opened by one
/// connection (an operator creating a thousand, a tool) still spread over the cores; when
/// connections stay where they were accepted, a tenant opened on one of the loops (the loop of
/// the connection whose AUTH or USE opened it) stays there, and one opened elsewhere (start-up,
/// the registry's own work) goes to the loop with the fewest.
public final class TenantPlacement: Sendable {
    /// How a loop is chosen for a tenant opening.
    public enum Rule: Sendable {
        /// The loop with the fewest tenants, the opener's among equals.
        case fewestTenants
        /// The opener's loop when it is one of them, else the loop with the fewest tenants.
        case openersLoop
    }

    /// A tenant's place on a loop, given back when its executor goes.
    final class Seat: Sendable {
        let placement: TenantPlacement
        let index: Int

        init(placement: TenantPlacement, index: Int) {
            self.placement = placement
            self.index = index
        }

        deinit {
            self.placement.counts.withLock { $0[self.index] -= 1 }
        }
    }

    private let executors: [any SerialExecutor]
    private let current: @Sendable () -> (any SerialExecutor)?
    private let rule: Rule
    fileprivate let counts: Mutex<[Int]>

    /// Creates a placement over `executors` (an event loop group's loops, in order).
    /// - Parameters:
    ///   - rule: how a loop is chosen.
    ///   - current: the executor the calling thread runs, if it is one of them.
    public init(
        executors: [any SerialExecutor],
        rule: Rule = .openersLoop,
        current: @escaping @Sendable () -> (any SerialExecutor)?
    ) {
        precondition(!executors.isEmpty, "a placement needs at least one executor")
        self.executors = executors
        self.rule = rule
        self.current = current
        self.counts = Mutex(Array(repeating: 0, count: executors.count))
    }

    /// The number of executors.
    public var count: Int { self.executors.count }

    /// The tenants placed on each executor now, in order.
    public var load: [Int] { self.counts.withLock { $0 } }

    /// An executor for a tenant opening now.
    func place() -> TenantExecutor {
        let here = self.current().flatMap { current in self.executors.firstIndex { $0 === current } }
        let index = self.counts.withLock { counts in
            let fewest = counts.min()!
            let chosen: Int
            switch self.rule {
            case .openersLoop:
                chosen = here ?? counts.firstIndex(of: fewest)!
            case .fewestTenants:
                chosen = here.flatMap { counts[$0] == fewest ? $0 : nil } ?? counts.firstIndex(of: fewest)!
            }
            counts[chosen] += 1
            return chosen
        }
        return TenantExecutor(on: self.executors[index], seat: Seat(placement: self, index: index))
    }
}

extension EngineConfiguration {
    /// An executor for a tenant opening now: on an event loop when the server placed tenants,
    /// a lane of its own otherwise.
    func makeTenantExecutor() -> TenantExecutor {
        self.placement?.place() ?? TenantExecutor()
    }
}
