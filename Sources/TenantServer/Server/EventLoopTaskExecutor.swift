import NIOCore

/// An event loop as a task executor: a connection's tasks prefer the loop its socket is on, so
/// a request is parsed, run and answered on one thread.
///
/// Without it, each request crossed threads three times: from the event loop to a task of
/// Swift's pool, from there (after the command) to the writer task, and back to the event loop to
/// write. The tenants' lanes are default actors, which run on the task's preferred executor: the
/// command runs there too.
final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    /// `@unchecked Sendable`: its one property is an immutable event loop.
    private let loop: any EventLoop

    init(_ loop: any EventLoop) {
        self.loop = loop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = self.asUnownedTaskExecutor()
        self.loop.execute { job.runSynchronously(on: executor) }
    }

    func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }
}
