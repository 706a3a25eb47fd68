import Dispatch

/// The serial executor tenants run on: one per tenant under the `database` and `schema`
/// strategies, one for all of them under `shared` (one store, one serialisation domain).
///
/// `@unchecked Sendable`: its only state is an immutable serial `DispatchQueue`.
public final class TenantExecutor: SerialExecutor, @unchecked Sendable {
    private let queue: DispatchQueue

    /// Creates an executor on its own serial queue.
    public init(label: String) {
        self.queue = DispatchQueue(label: label, target: .global(qos: .userInitiated))
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = self.asUnownedSerialExecutor()
        self.queue.async { job.runSynchronously(on: executor) }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }
}
