import EngineTestSupport
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
            try await InProcessServer.run(configuration, registry: registry) { bound, server in
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
            }
            await registry.shutdown()
        }
    }
}
