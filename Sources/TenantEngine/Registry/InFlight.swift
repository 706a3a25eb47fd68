/// Operations in flight by tenant id: a second request for an id joins the first instead of
/// starting another (activations, so a tenant opens once however many ask; auto-provisioned
/// creations, so concurrent references wait for the one creation).
struct InFlight<Value: Sendable> {
    private var tasks: [String: Task<Value, any Error>] = [:]

    /// The operation running for `id`, if any.
    func running(_ id: String) -> Task<Value, any Error>? { self.tasks[id] }

    /// Starts `operation` for `id`; ``finish(_:)`` forgets it once its result is taken.
    mutating func start(
        _ id: String,
        _ operation: @escaping @Sendable () async throws -> Value
    ) -> Task<Value, any Error> {
        let task = Task { try await operation() }
        self.tasks[id] = task
        return task
    }

    /// Forgets `task`, if it is still the one running for `id` (a later one started for the same
    /// id is left alone).
    mutating func finish(_ id: String, _ task: Task<Value, any Error>) {
        if self.tasks[id] == task { self.tasks[id] = nil }
    }

    /// Every operation running, to wait for at shutdown.
    var all: [Task<Value, any Error>] { Array(self.tasks.values) }
}
