import EngineTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import TenantEngine
import TenantServer
import TestSupport
import Testing
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// The server in-process, over a log whose disk fails on demand.
@Suite("Server over a failing disk")
struct ServerFaultTests {
    @Test func pipelinedPostsAcrossADiskFaultGetTheirSeqOrIOERRAndNothingAcknowledgedIsLost() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let (registry, created, _) = try await FaultTests.registryOverFaultyDisk(dir.path, disk: disk)
            let configuration = ServerConfiguration(host: "127.0.0.1", port: 0)
            try await InProcessServer.run(configuration, registry: registry) { bound, _ in
                let token = created.ownerToken
                let dataPath = dir.path
                // The blocking client runs on a thread of its own, never on the pool the server uses.
                try await offThePool {
                    let client = try RESPTestClient(port: bound)
                    #expect(try client.call("AUTH", "alice@acme", token) == .simple("OK"))
                    #expect(try client.call("POST", "r", "before") == .integer(1))
                    // The 3rd fdatasync from now fails: a pipelined burst straddles the fault.
                    disk.fail(.sync, after: 2, errno: EIO)
                    var replies: [RESPReply] = []
                    for _ in 0..<10 {
                        replies += try client.pipeline((0..<50).map { ["POST", "r", "burst \($0)"] })
                    }
                    let acknowledged = replies.prefix { $0.int != nil }.count
                    #expect(acknowledged < replies.count, "the fault was never hit")
                    #expect(
                        replies.prefix(acknowledged)
                            == ArraySlice((0..<acknowledged).map { RESPReply.integer(Int64($0 + 2)) })
                    )
                    #expect(replies.dropFirst(acknowledged).allSatisfy { $0.errorCode == "IOERR" })
                    // The tenant's user is told what failed, never where: no server path.
                    let texts = replies.dropFirst(acknowledged).compactMap(\.errorText)
                    #expect(!texts.contains { $0.contains(dataPath) || $0.contains("/wal") }, "\(texts.first ?? "")")
                    #expect(try client.call("HISTORY", "r", "LIMIT", "1000").elements?.count == acknowledged + 1)
                    // The disk recovers; the operator reopens the tenant; everything acknowledged is there.
                    disk.clearFaults()
                    let admin = try RESPTestClient(port: bound)
                    #expect(try admin.call("AUTH", "operator-token-0123456789abcdef-0123") == .simple("OK"))
                    #expect(try admin.call("TENANT", "REOPEN", "acme") == .simple("OK"))
                    let history = try #require(try client.call("HISTORY", "r", "AFTER", "0", "LIMIT", "1000").elements)
                    #expect(history.count >= acknowledged + 1)
                    #expect(try client.call("POST", "r", "after") == .integer(Int64(history.count + 1)))
                }
            }
            await registry.shutdown()
        }
    }
}
