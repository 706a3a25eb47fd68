import CPOSIX
import NIOCore
import NIOPosix
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
