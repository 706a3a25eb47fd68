import CPOSIX
import NIOCore
import NIOPosix
import Synchronization
import TenantEngine

/// The server's event loops: `--threads` of them (by default the CPUs the process may run on),
/// in NIO's singleton group, which the listeners, the metrics listener and the migration client
/// share; and the placement of tenants on them.
public enum EventLoops {
    /// The CPUs this process may run on (its affinity: `taskset -c 0` gives 1).
    public static var usableCPUs: Int { Int(cposix_usable_cpus()) }

    /// Sets the number of loops. Only before anything uses the group: NIO fixes it then.
    public static func configure(threads: Int) {
        NIOSingletons.groupLoopCountSuggestion = threads
    }

    /// Tenants placed on `group`'s loops, where each stays until it closes: on the loop with the
    /// fewest tenants when connections move to their tenant's loop (`connectionsMove`), on the
    /// opener's loop otherwise (``TenantPlacement/Rule``).
    public static func placement(
        group: MultiThreadedEventLoopGroup = .singleton,
        connectionsMove: Bool = true
    ) -> TenantPlacement {
        let executors = Array(group.makeIterator()).map { $0.executor }
        return TenantPlacement(executors: executors, rule: connectionsMove ? .fewestTenants : .openersLoop) {
            MultiThreadedEventLoopGroup.currentEventLoop?.executor
        }
    }
}

/// One value per event loop, made the first time a loop asks and kept for the process's life
/// (each loop's ``LoopTurn`` and ``PushRelay``).
final class PerLoop<Value: AnyObject & Sendable>: Sendable {
    private let values = Mutex<[ObjectIdentifier: Value]>([:])
    private let make: @Sendable (any EventLoop) -> Value

    init(_ make: @escaping @Sendable (any EventLoop) -> Value) {
        self.make = make
    }

    /// The value of `loop`.
    func of(_ loop: any EventLoop) -> Value {
        self.values.withLock { values in
            if let value = values[ObjectIdentifier(loop)] { return value }
            let value = self.make(loop)
            values[ObjectIdentifier(loop)] = value
            return value
        }
    }
}

/// Work an event loop sends to other loops, gathered over its tick and sent with one `execute`
/// per destination at the tick's end: the remote runs of many connections (and their replies on
/// the way back) cost each loop one wake-up and one pass through its task queue's lock per tick,
/// not one per connection.
///
/// `@unchecked Sendable`: every property is touched only on `loop` (checked with assertions).
final class LoopMailbox: @unchecked Sendable {
    private struct Outgoing {
        let destination: any EventLoop
        var work: [@Sendable () -> Void]
    }

    private let loop: any EventLoop
    private var outgoing: [Outgoing] = []
    private var scheduled = false

    private init(loop: any EventLoop) {
        self.loop = loop
    }

    private static let mailboxes = PerLoop { LoopMailbox(loop: $0) }

    /// The mailbox of `loop` (one per loop, for the process's life).
    static func of(_ loop: any EventLoop) -> LoopMailbox { self.mailboxes.of(loop) }

    /// Runs `work` on `destination` after this tick's other work, with everything else this loop
    /// sends there in the tick, in the order sent. On this mailbox's loop only.
    func send(to destination: any EventLoop, _ work: @escaping @Sendable () -> Void) {
        self.loop.assertInEventLoop()
        if let index = self.outgoing.firstIndex(where: { $0.destination === destination }) {
            self.outgoing[index].work.append(work)
        } else {
            self.outgoing.append(Outgoing(destination: destination, work: [work]))
        }
        guard !self.scheduled else { return }
        self.scheduled = true
        self.loop.execute { self.flush() }
    }

    private func flush() {
        self.loop.assertInEventLoop()
        self.scheduled = false
        let outgoing = self.outgoing
        self.outgoing.removeAll(keepingCapacity: true)
        for batch in outgoing {
            let work = batch.work
            batch.destination.execute {
                for item in work { item() }
            }
        }
    }
}
