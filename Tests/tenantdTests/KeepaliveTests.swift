import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import TenantEngine
import TestSupport
import Testing

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// `--tcp-keepalive`: the options are set on every accepted socket, read back from the kernel.
@Suite("TCP keepalive")
struct KeepaliveTests {
    @Test(arguments: [5, 300, 0])
    func everyConnectionGetsTheKeepaliveOptions(seconds: Int) async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let (registry, _, _) = try await FaultTests.registryOverFaultyDisk(dir.path, disk: disk)
            var configuration = ServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.limits.tcpKeepaliveSeconds = seconds
            let port = Mutex(0)
            let server = TenantServer(configuration: configuration, registry: registry, logger: Logger.quiet) {
                _,
                bound in
                port.withLock { $0 = bound }
            }
            let group = ServiceGroup(services: [server], logger: Logger.quiet)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                try await waitUntilAsync("the server to listen") { port.withLock { $0 } != 0 }
                let bound = port.withLock { $0 }
                let client = try RESPTestClient(port: bound)
                #expect(try await offThePool { try client.call("PING") } == .simple("PONG"))
                let channel = try #require(server.openChannels.first)
                let enabled = try await channel.getOption(ChannelOptions.socketOption(.so_keepalive))
                #expect((enabled != 0) == (seconds > 0))
                if seconds > 0 {
                    #expect(try await channel.getOption(TenantServer.tcpOption(TCP_KEEPIDLE)) == Int32(seconds))
                    #expect(
                        try await channel.getOption(TenantServer.tcpOption(TCP_KEEPINTVL)) == Int32(max(1, seconds / 3))
                    )
                    #expect(try await channel.getOption(TenantServer.tcpOption(TCP_KEEPCNT)) == 3)
                }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            await registry.shutdown()
        }
    }
}
