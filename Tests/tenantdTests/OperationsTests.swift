import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Operator-facing behaviour of the real binaries: configuration from the environment,
/// `tenantctl verify`, and a damaged tenant that leaves the others serving.
@Suite("Operations", .serialized)
struct OperationsTests {
    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static var tenantctl: String {
        (TenantdProcess.binaryPath as NSString).deletingLastPathComponent + "/tenantctl"
    }

    @Test func adminTokenFromTheEnvironmentAndNoTokenFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(
            dataDirectory: dir.path + "/data",
            environment: ["TENANT_ADMIN_TOKEN": "s3cret-operator", "TENANTD_FSYNC": "always"]
        )
        let client = try server.client()
        #expect(try client.call("AUTH", "admin", "wrong").errorCode == "WRONGPASS")
        #expect(try client.call("AUTH", "admin", "s3cret-operator") == .simple("OK"))
        #expect(try client.call("CONFIG", "GET", "appendfsync").elements?.last?.string == "always")
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/data/admin.token"))
        #expect(server.stop() == 0)
    }

    @Test func verifyReportsHealthyAndDamagedTenantsAndTheOthersServeOn() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data)
        let admin = try server.client()
        try admin.call("AUTH", "admin", server.adminToken())
        let a = try #require(try admin.call("TENANT", "CREATE", "A", "tenant-a").fields)
        let b = try #require(try admin.call("TENANT", "CREATE", "B", "tenant-b").fields)
        let idA = try #require(a["tenant_id"]?.string)
        let tokenA = try #require(a["owner_token"]?.string)
        let tokenB = try #require(b["owner_token"]?.string)
        let ownerA = try server.client()
        try ownerA.call("AUTH", "owner@tenant-a", tokenA)
        for index in 1...5 { #expect(try ownerA.call("POST", "r", "m\(index)") == .integer(Int64(index))) }
        #expect(server.stop() == 0)

        let healthy = try Self.run(Self.tenantctl, ["verify", data])
        #expect(healthy.status == 0, "\(healthy.output)")
        #expect(healthy.output.contains("OK   \(data)/tenant_\(idA): tenant \(idA), checkpoint at lsn 7"))
        #expect(healthy.output.contains("5 messages in 1 rooms, 1 users"))

        // The clean stop compacted A into a checkpoint. Damage a byte inside its first block:
        // corruption, not a torn tail, and no log left that could stand in for it.
        let first = "\(data)/tenant_\(idA)/checkpoint/00000000000000000007.ckpt"
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: first)))
        bytes[30] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: first))
        let damaged = try Self.run(Self.tenantctl, ["verify", data])
        #expect(damaged.status == 1)
        #expect(damaged.output.contains("BAD  \(data)/tenant_\(idA)"))
        #expect(damaged.output.contains(first))
        #expect(damaged.output.contains("offset 24"))

        server = try TenantdProcess(dataDirectory: data)
        let probe = try server.client()
        let refused = try probe.call("AUTH", "owner@\(idA)", tokenA)
        #expect(refused.errorCode == "IOERR" || refused.errorCode == "WRONGPASS", "\(refused)")
        let ownerB = try server.client()
        #expect(try ownerB.call("AUTH", "owner@tenant-b", tokenB) == .simple("OK"))
        #expect(try ownerB.call("POST", "r", "b goes on") == .integer(1))
        // Nothing of the damaged tenant was cut or rewritten.
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: first))) == bytes)
        #expect(server.stop() == 0)
    }
}
