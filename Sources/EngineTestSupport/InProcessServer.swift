import Logging
import ServiceLifecycle
import Synchronization
import TenantEngine
import TenantServer
import TestSupport

/// The server in-process for a test: one definition of starting it in a service group, waiting
/// for its port, and stopping it once the test's body returns or throws.
public enum InProcessServer {
    /// Runs `body` with the port `server` listens on; the server stops after it.
    /// - Parameter make: makes the server, given the callback that must receive its bound port.
    public static func run(
        _ make: (_ onBound: @escaping @Sendable (String, Int) -> Void) -> TenantServer,
        _ body: @escaping @Sendable (_ port: Int, _ server: TenantServer) async throws -> Void
    ) async throws {
        let port = Mutex(0)
        let server = make { _, bound in port.withLock { $0 = bound } }
        let services = ServiceGroup(services: [server], logger: Logger.quiet)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await services.run() }
            do {
                try await waitUntilAsync("the server to listen") { port.withLock { $0 } != 0 }
                try await body(port.withLock { $0 }, server)
            } catch {
                await services.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
            await services.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    /// Runs `body` against a server on 127.0.0.1 with `configuration` (its port is set to 0) over
    /// `registry`.
    public static func run(
        _ configuration: ServerConfiguration,
        registry: TenantRegistry,
        _ body: @escaping @Sendable (_ port: Int, _ server: TenantServer) async throws -> Void
    ) async throws {
        var configuration = configuration
        configuration.port = 0
        try await Self.run(
            { onBound in
                TenantServer(configuration: configuration, registry: registry, logger: Logger.quiet) { host, port in
                    onBound(host, port)
                }
            },
            body
        )
    }
}
