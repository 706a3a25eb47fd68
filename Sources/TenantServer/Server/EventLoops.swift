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

    /// Tenants placed on `group`'s loops: one opened on a loop of it stays there.
    public static func placement(group: MultiThreadedEventLoopGroup = .singleton) -> TenantPlacement {
        let executors = Array(group.makeIterator()).map { $0.executor }
        return TenantPlacement(executors: executors) { MultiThreadedEventLoopGroup.currentEventLoop?.executor }
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
