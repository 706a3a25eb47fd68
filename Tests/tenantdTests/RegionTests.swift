import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// Issue 10, point 3: regions. A tenant placed in a region lives under that region's root, and
/// nothing of its messages, users or tokens is written anywhere else; TENANT MOVE moves it online
/// with nothing acknowledged lost, whatever step a crash interrupts; placement survives restarts.
@Suite("Regions", .serialized)
struct RegionTests {
    /// The flags of two regions under `dir`, their roots made (a root must exist: a volume not
    /// mounted is not silently replaced by an empty directory).
    static func regionFlags(_ dir: String) -> [String] {
        for name in ["eu", "us"] {
            try? FileManager.default.createDirectory(atPath: dir + "/" + name, withIntermediateDirectories: true)
        }
        return ["--region", "eu=\(dir)/eu", "--region", "us=\(dir)/us"]
    }

    /// Every file under `root` (skipping `skip`) holding `needle`.
    static func files(under root: String, containing needle: String, skipping skip: [String] = []) -> [String] {
        let bytes = Data(needle.utf8)
        var found: [String] = []
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        while let relative = walker.nextObject() as? String {
            let path = root + "/" + relative
            if skip.contains(where: { path.hasPrefix($0) }) { continue }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue,
                let contents = FileManager.default.contents(atPath: path)
            else { continue }
            if contents.range(of: bytes) != nil { found.append(path) }
        }
        return found
    }

    @Test func aTenantInARegionIsWrittenOnlyUnderItsRoot() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data", arguments: Self.regionFlags(dir.path))
        let admin = try server.operatorClient()
        let created = try admin.call("TENANT", "CREATE", "Acme", "acme", "OWNER", "alice", "REGION", "eu")
        let fields = try #require(created.fields)
        #expect(fields["region"]?.string == "eu")
        let id = try #require(fields["tenant_id"]?.string)
        let token = try #require(fields["owner_token"]?.string)
        let plain = try admin.createTenant(name: "Plain", subdomain: "plain")
        #expect(try admin.call("TENANT", "GET", id).fields?["region"]?.string == "eu")
        #expect(try admin.call("TENANT", "GET", plain.id).fields?["region"]?.string == "")
        let listed = try #require(try admin.call("TENANT", "LIST").elements).compactMap(\.fields)
        #expect(listed.first { $0["tenant_id"]?.string == id }?["region"]?.string == "eu")
        #expect(try admin.call("TENANT", "CREATE", "X", "xco", "REGION", "mars").errorCode == "INVALID")
        #expect(try admin.call("TENANT", "CREATE", "X", "xco", "REGION", "../eu").errorCode == "INVALID")
        #expect(FileManager.default.fileExists(atPath: dir.path + "/eu/tenant_\(id)/wal"))
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/data/tenant_\(id)"))

        let alice = try server.login("alice@acme", token)
        let bobToken = try #require(try alice.call("USER", "ADD", "bob-the-resident").string)
        for index in 1...50 {
            #expect(try alice.call("POST", "general", "residency-marker-\(index)") == .integer(Int64(index)))
        }
        #expect(server.stop() == 0)
        // Outside the region's root: no message, no user, no token or token hash (the catalog in
        // the data directory holds the name and subdomain it routes by).
        let hash = Tokens.hash(bobToken).map { String(format: "%02x", $0) }.joined()
        for needle in ["residency-marker-", "bob-the-resident", bobToken, token, hash] {
            #expect(Self.files(under: dir.path + "/data", containing: needle).isEmpty, "\(needle)")
            #expect(Self.files(under: dir.path + "/us", containing: needle).isEmpty, "\(needle)")
        }
        // The logs are compressed, so the scan above is backed by the listing: outside the region's
        // root there is nothing but the server's own files and the other tenant's directory.
        let outside = try #require(FileManager.default.enumerator(atPath: dir.path + "/data")?.allObjects as? [String])
        let expected: Set<String> = [
            "admin.token", "strategy", "catalog", "catalog/tenants.bin", ".trash", "regions", "regions/eu",
            "regions/us",
        ]
        let unexpected = outside.filter { !expected.contains($0) && !$0.hasPrefix("tenant_\(plain.id)") }
        #expect(unexpected.isEmpty, "\(unexpected)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path + "/us") == [".tenantd-region"])
        // And the region's root holds the user (read back through the export).
        let exported = try PortableTests.tenantctl(["export", dir.path + "/eu/tenant_\(id)"])
        #expect(exported.output.contains(#""name":"bob-the-resident""#))

        // Placement is kept across a restart.
        let restarted = try TenantdProcess(dataDirectory: dir.path + "/data", arguments: Self.regionFlags(dir.path))
        defer { _ = restarted.stop() }
        #expect(try restarted.operatorClient().call("TENANT", "GET", id).fields?["region"]?.string == "eu")
        let history = try EndToEndTests.allMessages(
            try restarted.login("bob-the-resident@acme", bobToken),
            room: "general"
        )
        #expect(history.count == 50)
    }

    /// A client posts without pause while the tenant moves between regions and back: every
    /// acknowledged message is there, in order; after a restart it is served from the new root.
    @Test func aMoveWhileAClientPostsLosesNothingAcknowledged() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var server = try TenantdProcess(dataDirectory: dir.path + "/data", arguments: Self.regionFlags(dir.path))
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        let other = try admin.createTenant(name: "Other", subdomain: "other")
        let port = server.port
        let acknowledged = Mutex<[Int64]>([])
        let stop = Atomic<Bool>(false)
        let poster = Thread {
            guard let client = try? RESPTestClient(port: port),
                (try? client.call("AUTH", "alice@acme", acme.token)) == .simple("OK")
            else { return }
            var index = 0
            while !stop.load(ordering: .relaxed) {
                index += 1
                guard let reply = try? client.call("POST", "general", "m\(index)") else { return }
                if let seq = reply.int { acknowledged.withLock { $0.append(seq) } }
            }
        }
        poster.start()
        try waitUntil("the client posting") { acknowledged.withLock { $0.count } >= 10 }
        for region in ["eu", "us", "", "eu"] {
            let before = acknowledged.withLock { $0.count }
            #expect(try admin.call("TENANT", "MOVE", acme.id, "REGION", region) == .simple("OK"), "\(region)")
            // The client goes on after each move (it waited, it was not cut off).
            try waitUntil("acknowledgements after the move to '\(region)'") {
                acknowledged.withLock { $0.count } > before + 10
            }
        }
        #expect(try admin.call("TENANT", "MOVE", acme.id, "REGION", "mars").errorCode == "INVALID")
        #expect(try admin.call("TENANT", "MOVE", "nosuch", "REGION", "eu").errorCode == "NOTFOUND")
        #expect(try admin.call("TENANT", "MOVE", acme.id, "TO", "eu").errorCode == "ERR")
        stop.store(true, ordering: .relaxed)
        while poster.isExecuting { Thread.sleep(forTimeInterval: 0.01) }
        let seqs = acknowledged.withLock { $0 }
        #expect(seqs.count > 20, "the client kept posting: \(seqs.count)")
        #expect(seqs == Array(1...Int64(seqs.count)), "acknowledged in order, no gap")
        let moves = server.stderrText().split(separator: "\n").filter { $0.contains("event=tenant_moved") }
        #expect(moves.count == 4 && moves.allSatisfy { $0.contains("tenant_id=\(acme.id)") }, "\(moves)")
        #expect(moves.first?.contains("from=- ") == true && moves.first?.contains("to=eu") == true)
        // The other tenant never noticed.
        #expect(try server.login("alice@other", other.token).call("POST", "r", "x") == .integer(1))
        #expect(server.stop() == 0)
        #expect(FileManager.default.fileExists(atPath: dir.path + "/eu/tenant_\(acme.id)"))
        for root in ["data", "us"] {
            #expect(!FileManager.default.fileExists(atPath: dir.path + "/\(root)/tenant_\(acme.id)"), "\(root)")
        }
        server = try TenantdProcess(dataDirectory: dir.path + "/data", arguments: Self.regionFlags(dir.path))
        defer { _ = server.stop() }
        #expect(try server.operatorClient().call("TENANT", "GET", acme.id).fields?["region"]?.string == "eu")
        let history = try EndToEndTests.allMessages(try server.login("alice@acme", acme.token), room: "general")
        #expect(history.map(\.seq).prefix(seqs.count) == seqs[...])
    }

    /// A crash at every step of a move, process killed and power cut: a restart serves the tenant
    /// whole, from exactly one root, the new one once the move was acknowledged.
    @Test func aCrashAtEveryStepOfAMove() async throws {
        try await StorageCrashTests.crashAtEveryStep(
            strategy: .database,
            regions: ["eu"],
            prepare: { try await StorageCrashTests.populate($0, tenants: 2) },
            operation: { registry, _ in
                let id = try #require(await registry.resolveAny("team0"))
                try await registry.moveTenant(id: id, region: "eu")
            },
            check: { expected, seen, completed, trial in
                #expect(seen == expected)
                let restarted = try await StorageCrashTests.registry(trial, strategy: .database, regions: ["eu"])
                let id = try #require(await restarted.resolveAny("team0"))
                let inRegion = FileManager.default.fileExists(atPath: trial + "/region-eu/tenant_\(id)")
                let inData = FileManager.default.fileExists(atPath: trial + "/data/tenant_\(id)")
                #expect(inRegion != inData, "in exactly one root (region \(inRegion), data \(inData))")
                if completed { #expect(inRegion) }
                #expect(restarted.region(of: id) == (inRegion ? "eu" : ""))
                #expect(!FileManager.default.fileExists(atPath: trial + "/region-eu/tenant_\(id)/MOVED_FROM"))
                await restarted.shutdown(checkpoint: false)
            }
        )
    }

    /// Two copies of a tenant that no move explains (copied by hand): the data directory's is
    /// served, nothing is removed, the operator is told.
    @Test func twoCopiesWithoutAMoveAreLeftForTheOperator() async throws {
        try await TemporaryDirectory.with { dir in
            let path = dir.path + "/server"
            let registry = try await StorageCrashTests.registry(path, strategy: .database, regions: ["eu"])
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "o")
            let id = created.metadata.tenantID
            await registry.shutdown(checkpoint: true)
            try FileManager.default.copyItem(
                atPath: path + "/data/tenant_\(id)",
                toPath: path + "/region-eu/tenant_\(id)"
            )
            let restarted = try await StorageCrashTests.registry(path, strategy: .database, regions: ["eu"])
            #expect(restarted.region(of: id) == "")
            #expect(FileManager.default.fileExists(atPath: path + "/region-eu/tenant_\(id)"))
            #expect(FileManager.default.fileExists(atPath: path + "/data/tenant_\(id)"))
            #expect(try await restarted.tenant(id: id).id == id)
            await restarted.shutdown(checkpoint: false)
        }
    }

    @Test func regionsAreRefusedWhereTheyCannotHold() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // Under the schema strategy every tenant is in one log: REGION is INVALID.
        let schema = try TenantdProcess(
            dataDirectory: dir.path + "/schema",
            arguments: Self.regionFlags(dir.path),
            environment: ["TENANT_ISOLATION_STRATEGY": "schema"]
        )
        defer { _ = schema.stop() }
        let admin = try schema.operatorClient()
        #expect(try admin.call("TENANT", "CREATE", "A", "acme", "REGION", "eu").errorCode == "INVALID")
        let plain = try admin.createTenant(name: "P", subdomain: "plain")
        #expect(try admin.call("TENANT", "MOVE", plain.id, "REGION", "eu").errorCode == "INVALID")
        // Bad region settings stop the server at start, each for its own reason (the roots exist).
        let roots = dir.path + "/roots"
        for name in ["a", "b"] {
            try FileManager.default.createDirectory(atPath: roots + "/" + name, withIntermediateDirectories: true)
        }
        try FileManager.default.createDirectory(atPath: dir.path + "/data/inside", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: roots + "/alias-of-a", withDestinationPath: roots + "/a")
        try FileManager.default.createSymbolicLink(
            atPath: roots + "/alias-of-data",
            withDestinationPath: dir.path + "/data"
        )
        let bad: [[String]] = [
            ["--region", "EU=\(roots)/a"],  // not a region name
            ["--region", "eu"],  // no root
            ["--region", "eu=\(dir.path)/data"],  // the data directory
            ["--region", "eu=\(roots)/a", "--region", "eu=\(roots)/b"],  // a name twice
            ["--region", "eu=\(roots)/a", "--region", "us=\(roots)/a"],  // a root twice
            ["--region", "eu=\(roots)/a", "--region", "us=\(roots)/alias-of-a"],  // the same, by a link
            ["--region", "eu=\(roots)/alias-of-data"],  // the data directory, by a link
            ["--region", "eu=\(dir.path)/data/inside"],  // inside the data directory
            ["--region", "eu=\(roots)/missing"],  // a root that is not there (a volume not mounted)
        ]
        for flags in bad {
            #expect(throws: (any Error).self, "\(flags)") {
                try TenantdProcess(dataDirectory: dir.path + "/data", arguments: flags)
            }
        }
        #expect(throws: (any Error).self) {
            try TenantdProcess(dataDirectory: dir.path + "/data", environment: ["TENANT_REGIONS": "eu=\(roots)/a,bad"])
        }
        // A region in use whose root later holds no identity (an empty mount point) is refused;
        // so is a root that says it is another region's.
        let first = try TenantdProcess(dataDirectory: dir.path + "/data2", arguments: ["--region", "eu=\(roots)/b"])
        #expect(first.stop() == 0)
        try FileManager.default.removeItem(atPath: roots + "/b/.tenantd-region")
        #expect(throws: (any Error).self) {
            try TenantdProcess(dataDirectory: dir.path + "/data2", arguments: ["--region", "eu=\(roots)/b"])
        }
        try "us\n".write(toFile: roots + "/b/.tenantd-region", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) {
            try TenantdProcess(dataDirectory: dir.path + "/data2", arguments: ["--region", "eu=\(roots)/b"])
        }
        // And a good configuration starts.
        #expect(
            try TenantdProcess(dataDirectory: dir.path + "/data3", arguments: ["--region", "eu=\(roots)/a"]).stop() == 0
        )
    }
}
