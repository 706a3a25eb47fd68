import Foundation
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// A tenant directory copied in from outside whose checkpoint is crafted (valid checksums, a
/// room claiming 2^63 messages) never stops the real server, at start-up or on TENANT ATTACH,
/// and `tenantctl verify` reports it.
@Suite("Crafted tenant directories", .serialized)
struct CraftedTenantTests {
    struct Setup {
        var data: String
        var good: (id: String, token: String)
        var craftedID: String
        /// The crafted tenant directory's path in the data directory.
        var craftedDirectory: String { self.data + "/tenant_" + self.craftedID }
    }

    /// Two real tenants made by the server, stopped cleanly (so each is one checkpoint); the
    /// second one's checkpoint is then replaced by a crafted one at the same lsn, and the catalog
    /// removed so that start-up reads every tenant directory.
    static func makeCraftedTenant(in dir: TemporaryDirectory) throws -> Setup {
        let data = dir.path + "/data"
        let server = try TenantdProcess(dataDirectory: data)
        let admin = try server.operatorClient()
        let good = try admin.createTenant(name: "Good", subdomain: "good", owner: "owner")
        let crafted = try admin.createTenant(name: "Crafted", subdomain: "crafted", owner: "owner")
        #expect(try server.login("owner@good", good.token).call("POST", "r", "kept") == .integer(1))
        #expect(try server.login("owner@crafted", crafted.token).call("POST", "r", "replaced") == .integer(1))
        #expect(server.stop() == 0)

        let checkpoints = data + "/tenant_\(crafted.id)/checkpoint"
        let name = try #require(try FileManager.default.contentsOfDirectory(atPath: checkpoints).first)
        let lsn = try #require(Checkpoint.lsn(ofFileNamed: name))
        let body = CraftedInputTests.body(room: { writer in writer.writeVarint(1 << 63) })
        try Data(try Checkpoint.encode(body: body, lsn: lsn)).write(to: URL(fileURLWithPath: checkpoints + "/" + name))
        try FileManager.default.removeItem(atPath: data + "/catalog/tenants.bin")
        return Setup(data: data, good: good, craftedID: crafted.id)
    }

    /// The good tenant still takes a POST and answers HISTORY with it.
    static func expectGoodTenantServes(_ server: TenantdProcess, _ setup: Setup) throws {
        let owner = try server.login("owner@good", setup.good.token)
        #expect(try owner.call("POST", "r", "still here") == .integer(2))
        let texts = try #require(try owner.call("HISTORY", "r", "LIMIT", "10").elements).compactMap {
            $0.elements?[3].string
        }
        #expect(texts == ["kept", "still here"])
    }

    /// Issue 25, finding 5: a checkpoint with valid checksums whose body is millions of empty
    /// messages (all zeros: lz4 packs it 250 to 1). In the earlier format, a 70 KB file, it is
    /// refused before anything is decompressed (over 64 times the file). In this version's, padded
    /// to a 64th of the body, it is read: its columns were decoded into arrays of their own first
    /// (24 bytes a message, whatever the budget); now four cursors read them side by side, and
    /// the messages go to the cold store under --maxmemory, on ATTACH and in `tenantctl verify`.
    @Test func aCheckpointOfMillionsOfEmptyMessagesIsReadWithinTheBudget() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data)
        let admin = try server.operatorClient()
        let crafted = try admin.createTenant(name: "Crafted", subdomain: "crafted", owner: "owner")
        #expect(try admin.call("TENANT", "DETACH", crafted.id) == .simple("OK"))
        #expect(server.stop() == 0)
        let checkpoints = data + "/tenant_\(crafted.id)/checkpoint"
        let name = try #require(try FileManager.default.contentsOfDirectory(atPath: checkpoints).first)
        let lsn = try #require(Checkpoint.lsn(ofFileNamed: name))
        let count = 6_000_000
        // The tenant's own metadata, then one room of `count` messages whose timestamp deltas,
        // author indexes and lengths are all zero.
        let original = try Checkpoint.decode(
            bytes: Array(try Data(contentsOf: URL(fileURLWithPath: checkpoints + "/" + name))),
            path: name
        ).0
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var writer = BinaryWriter()
        writer.write(bytes: Array(try encoder.encode(try #require(original.metadata))))
        writer.writeVarint(0)
        writer.writeVarint(1)
        writer.write("r")
        writer.writeVarint(UInt64(count))
        writer.writeVarint(1)
        writer.write("u")
        writer.bytes += [UInt8](repeating: 0, count: 3 * count)
        let body = writer.bytes
        // The earlier format: refused, whatever its checksums say.
        let small = try Checkpoint.encode(body: body, lsn: lsn, version: 1)
        #expect(small.count < body.count / 100, "\(small.count) bytes for a body of \(body.count)")
        try Data(small).write(to: URL(fileURLWithPath: checkpoints + "/" + name))
        let tenantctl = TenantdProcess.binaryPath.replacingOccurrences(of: "/tenantd", with: "/tenantctl")
        let refused = Process()
        refused.executableURL = URL(fileURLWithPath: tenantctl)
        refused.arguments = ["verify", data + "/tenant_\(crafted.id)"]
        let refusal = Pipe()
        refused.standardOutput = refusal
        try refused.run()
        refused.waitUntilExit()
        let said = String(decoding: refusal.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(refused.terminationStatus == 1 && said.contains("64 times the file"), "\(said)")
        // This version's format: padded to a 64th of the body, read within the budget.
        let file = try Checkpoint.encode(body: body, lsn: lsn)
        #expect(file.count >= body.count / Checkpoint.maxExpansion && file.count < body.count / 32)
        try Data(file).write(to: URL(fileURLWithPath: checkpoints + "/" + name))

        // tenantctl verify, run by a python3 that reports its exit status, whether it read every
        // message, and its peak resident memory.
        let verify = Process()
        verify.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        verify.arguments = [
            "python3", "-c",
            "import resource, subprocess, sys; r = subprocess.run(sys.argv[2:], capture_output=True, text=True); "
                + "print(r.returncode, int(f'{sys.argv[1]} messages' in r.stdout), "
                + "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
            String(count),
            tenantctl, "verify", data + "/tenant_\(crafted.id)",
        ]
        let output = Pipe()
        verify.standardOutput = output
        try verify.run()
        verify.waitUntilExit()
        let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .split(separator: " ").map { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1 }
        #expect(report.count == 3 && report[0] == 0 && report[1] == 1, "tenantctl verify: \(report)")
        let peak = report.count == 3 ? report[2] : -1
        // The messages are held within the verification's 64 MiB budget, the rest is the process.
        #expect(peak > 0 && peak < 112 * 1024, "tenantctl verify peaked at \(peak) KiB for \(count) messages")

        // Out of the data directory while the server starts (a start would serve it), then back.
        let outside = dir.path + "/copied-in"
        try FileManager.default.moveItem(atPath: data + "/tenant_\(crafted.id)", toPath: outside)
        server = try TenantdProcess(dataDirectory: data, arguments: ["--maxmemory", "32mb"])
        try FileManager.default.moveItem(atPath: outside, toPath: data + "/tenant_\(crafted.id)")
        let before = server.peakResidentBytes()
        // Two reads of six million messages (the check, then the open) in a debug build: about
        // ten seconds alone, longer beside the rest of the suite; the client waits for it.
        let attacher = try RESPTestClient(port: server.port, timeout: 180)
        #expect(try attacher.call("AUTH", "admin", server.adminToken()) == .simple("OK"))
        let attached = try attacher.call("TENANT", "ATTACH", crafted.id)
        #expect(attached.errorCode == nil, "\(attached)")
        let growth = server.peakResidentBytes() - before
        #expect(growth < 96 << 20, "ATTACH grew the peak by \(growth >> 20) MiB for \(count) messages")
        // Every message is there: the last one's seq answers.
        let user = try server.operatorClient()
        #expect(try user.call("USE", crafted.id) == .simple("OK"))
        let last = try #require(try user.call("HISTORY", "r", "LIMIT", "1").elements)
        #expect(last.first?.elements?.first == .integer(Int64(count)))
        #expect(try server.operatorClient().call("PING") == .simple("PONG"))
        #expect(server.stop() == 0)
    }

    /// A version-2 file whose block claims more than 64 times its stored size is refused before
    /// anything is decompressed, and a body that lz4 packs 250 to 1 is written padded and reads
    /// back whole.
    @Test func versionTwoBlocksAreHeldToTheirBound() throws {
        let body = CraftedInputTests.body(room: { writer in
            writer.writeVarint(100_000)
            writer.writeVarint(1)
            writer.write("u")
            writer.bytes += [UInt8](repeating: 0, count: 300_000)
        })
        let file = try Checkpoint.encode(body: body, lsn: 3)
        #expect(file.count * Checkpoint.maxExpansion >= body.count)
        let reader = try CheckpointReader(source: CheckpointBytes(bytes: file), path: "ok.ckpt")
        #expect(reader.bodySize == body.count)
        let (state, lsn) = try Checkpoint.decode(bytes: file, path: "ok.ckpt")
        #expect(lsn == 3 && state.messageCount == 100_000)
        // The same body unpadded, under the version-2 magic: its block is over the bound.
        var crafted = try Checkpoint.encode(body: body, lsn: 3, version: 1)
        crafted.replaceSubrange(0..<8, with: Checkpoint.magic)
        let headerCRC = crafted[0..<20].withUnsafeBytes { CRC32C.mask(CRC32C.checksum($0)) }
        withUnsafeBytes(of: headerCRC.littleEndian) { crafted.replaceSubrange(20..<24, with: $0) }
        #expect {
            _ = try Checkpoint.decode(bytes: crafted, path: "crafted.ckpt")
        } throws: { error in
            "\(error)".contains("expands over 64 times")
        }
    }

    @Test func startUpServesTheOthersAndRefusesTheCraftedTenant() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let setup = try Self.makeCraftedTenant(in: dir)

        let server = try TenantdProcess(dataDirectory: setup.data)
        try Self.expectGoodTenantServes(server, setup)
        let refused = try server.operatorClient().call("USE", setup.craftedID)
        #expect(refused.errorCode == "NOTFOUND" || refused.errorCode == "IOERR", "\(refused)")
        let log = server.stderrText()
        #expect(log.contains("tenant_\(setup.craftedID) is not served") && log.contains("message count"), "\(log)")
        #expect(server.stop() == 0)
    }

    @Test func attachRefusesTheCraftedTenantAndTheServerGoesOn() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let setup = try Self.makeCraftedTenant(in: dir)
        let outside = dir.path + "/copied-in"
        try FileManager.default.moveItem(atPath: setup.craftedDirectory, toPath: outside)

        let server = try TenantdProcess(dataDirectory: setup.data)
        try FileManager.default.moveItem(atPath: outside, toPath: setup.craftedDirectory)
        let admin = try server.operatorClient()
        let reply = try admin.call("TENANT", "ATTACH", setup.craftedID)
        #expect(reply.errorCode == "IOERR", "\(reply)")
        #expect(reply.errorText?.contains("message count") == true, "\(reply)")
        #expect(try admin.call("PING") == .simple("PONG"))
        try Self.expectGoodTenantServes(server, setup)
        #expect(server.stop() == 0)
    }

    @Test func verifyReportsTheCraftedTenant() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let setup = try Self.makeCraftedTenant(in: dir)

        let verified = try OperationsTests.run(OperationsTests.tenantctl, ["verify", setup.craftedDirectory])
        #expect(verified.status == 1, "\(verified.output)")
        #expect(verified.output.contains("BAD  \(setup.craftedDirectory)"), "\(verified.output)")
        #expect(verified.output.contains("message count"), "\(verified.output)")
        let whole = try OperationsTests.run(OperationsTests.tenantctl, ["verify", setup.data])
        #expect(whole.status == 1, "\(whole.output)")
        #expect(whole.output.contains("OK   \(setup.data)/tenant_\(setup.good.id)"), "\(whole.output)")
    }

    @Test func operatorStorageLimitThatOverflowsIsRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        let admin = try server.operatorClient()
        let id = try admin.createTenant(name: "Big", subdomain: "big").id
        // 8589934592 GiB is 2^63 bytes: one past Int64.max.
        let refused = try admin.call("TENANT", "UPDATE", id, "max_storage_gb", "8589934592")
        #expect(refused.errorCode == "INVALID", "\(refused)")
        let largest = try admin.call("TENANT", "UPDATE", id, "max_storage_gb", "8589934591")
        #expect(largest.fields?["max_storage_bytes"] == .integer(8_589_934_591 << 30), "\(largest)")
        #expect(try admin.call("PING") == .simple("PONG"))
        #expect(server.stop() == 0)
    }
}
