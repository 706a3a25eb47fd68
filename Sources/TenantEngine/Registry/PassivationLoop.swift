/// The sweep that closes idle tenants (`TENANT_IDLE_SECONDS`): every `min(30, idle / 4)` seconds
/// (at least one), for as long as it runs. Which tenants are idle is each tenant's to say
/// (``Tenant/isIdle(now:idle:)``); closing them is the registry's.
struct PassivationLoop {
    private var task: Task<Void, Never>?

    /// The period of a sweep for tenants idle after `idleSeconds`.
    static func period(idleSeconds: Int) -> Duration {
        .seconds(min(30, max(1, idleSeconds / 4)))
    }

    /// Runs `sweep` every period until ``stop()``; `sweep` returns false when its owner is gone.
    mutating func start(idleSeconds: Int, _ sweep: @escaping @Sendable () async -> Bool) {
        let period = Self.period(idleSeconds: idleSeconds)
        self.task = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: period)
                guard await sweep() else { return }
            }
        }
    }

    mutating func stop() {
        self.task?.cancel()
        self.task = nil
    }
}
