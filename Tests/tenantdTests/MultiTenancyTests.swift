import Foundation
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The seed's multi-tenancy through the real binary: lifecycle, plans, quotas, id sources,
/// provisioning, single-tenant mode, pub/sub, and a cross-tenant matrix under every strategy.
@Suite("Multi-tenancy", .serialized)
struct MultiTenancyTests {
    struct Created {
        var id: String
        var token: String
    }

    static func admin(_ server: TenantdProcess) throws -> RESPTestClient {
        try server.operatorClient()
    }

    static func create(_ admin: RESPTestClient, _ subdomain: String, plan: String = "free") throws -> Created {
        let created = try admin.createTenant(name: "Org \(subdomain)", subdomain: subdomain, plan: plan)
        return Created(id: created.id, token: created.token)
    }

    static func login(_ server: TenantdProcess, _ user: String, _ token: String) throws -> RESPTestClient {
        try server.login(user, token)
    }

    /// What must not move in tenant B while A attacks it: its users and its metadata.
    static func snapshot(_ owner: RESPTestClient, id: String, admin: RESPTestClient) throws -> [RESPReply] {
        [try owner.call("USER", "LIST"), try admin.call("TENANT", "GET", id)]
    }

    @Test(arguments: ["database", "schema", "shared"])
    func crossTenantMatrix(strategy: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        let environment = ["TENANT_ISOLATION_STRATEGY": strategy]
        var server = try TenantdProcess(dataDirectory: data, environment: environment)
        var admin = try Self.admin(server)
        let a = try Self.create(admin, "tenant-a")
        let b = try Self.create(admin, "tenant-b")
        var ownerB = try Self.login(server, "alice@tenant-b", b.token)
        #expect(try ownerB.call("POST", "general", "b1") == .integer(1))
        let carolToken = try #require(try ownerB.call("USER", "ADD", "carol", "member").string)
        let before = try Self.snapshot(ownerB, id: b.id, admin: admin)

        let attacker = try Self.login(server, "alice@tenant-a", a.token)
        let subscriber = try Self.login(server, "alice@tenant-a", a.token)
        let pathB = "/tenant/\(b.id)/general"
        // Every command, aimed at B by name, path, subscription or user name.
        let refused: [([String], Set<String>)] = [
            (["POST", pathB, "x"], ["NOPERM"]),
            (["HISTORY", pathB], ["NOPERM"]),
            (["HISTORY", pathB, "AFTER", "0", "LIMIT", "5"], ["NOPERM"]),
            (["SUBSCRIBE", pathB], ["NOPERM"]),
            (["SUBSCRIBE", "general", pathB], ["NOPERM"]),
            (["USE", b.id], ["NOPERM"]),
            (["USE", "tenant-b"], ["NOPERM"]),
            (["AUTH", "alice@tenant-b", a.token], ["WRONGPASS"]),
            (["AUTH", "alice@\(b.id)", a.token], ["WRONGPASS"]),
            (["AUTH", "carol@tenant-a", carolToken], ["WRONGPASS"]),
            (["HELLO", "3", "AUTH", "alice@tenant-b", a.token], ["WRONGPASS"]),
            (["USER", "DEL", "carol"], ["NOTFOUND"]),
            (["USER", "ROLE", "carol", "owner"], ["NOTFOUND"]),
            (["USER", "TOKEN", "carol"], ["NOTFOUND"]),
            (["USER", "DEL", "carol@tenant-b"], ["NOTFOUND", "INVALID"]),
            (["TENANT", "GET", b.id], ["NOPERM"]),
            (["TENANT", "LIST"], ["NOPERM"]),
            (["TENANT", "LIST", "CURSOR", "0"], ["NOPERM"]),
            (["TENANT", "UPDATE", b.id, "max_users", "1"], ["NOPERM"]),
            (["TENANT", "SUSPEND", b.id], ["NOPERM"]),
            (["TENANT", "RESUME", b.id], ["NOPERM"]),
            (["TENANT", "DELETE", b.id, b.id], ["NOPERM"]),
            (["TENANT", "CREATE", "x", "tenant-b"], ["NOPERM"]),
            (["TENANT", "SIGNUP", "x", "tenant-bb", "eve"], ["NOPERM"]),
        ]
        for (command, codes) in refused {
            let reply = try attacker.call(command)
            #expect(codes.contains(reply.errorCode ?? "none"), "\(strategy): \(command) replied \(reply)")
        }
        // A's own room of the same name is A's alone, and a subscription to it hears only A.
        #expect(try subscriber.call("SUBSCRIBE", "general").elements?.last == .integer(1))
        #expect(try ownerB.call("POST", "general", "b2") == .integer(2))
        #expect(try attacker.call("POST", "general", "a1") == .integer(1))
        let push = try subscriber.read()
        #expect(
            push.elements?.last?.string == #"{"seq":1,"ts":"# + "\(try #require(Self.timestamp(of: push)))"
                + #","user":"alice","text":"a1"}"#
        )
        #expect(try attacker.call("HISTORY", "general").elements?.count == 1)
        #expect(try attacker.call("WHOAMI").elements?.first?.string == a.id)

        // B is as it was, but for its own second message.
        #expect(try ownerB.call("HISTORY", "general").elements?.count == 2)
        _ = try ownerB.call("USER", "LIST")
        let after = try Self.snapshot(ownerB, id: b.id, admin: admin)
        #expect(after[0] == before[0], "\(strategy): B's users changed")
        #expect(after[1] == before[1], "\(strategy): B's metadata changed")

        // Everything acknowledged comes back after a crash (kill -9) under the same strategy…
        server.stop(signal: SIGKILL)
        server = try TenantdProcess(dataDirectory: data, environment: environment)
        admin = try Self.admin(server)
        ownerB = try Self.login(server, "alice@tenant-b", b.token)
        _ = try Self.login(server, "carol@tenant-b", carolToken)
        #expect(try ownerB.call("HISTORY", "general").elements?.map { $0.elements?[3].string } == ["b1", "b2"])
        #expect(try ownerB.call("USER", "LIST") == before[0])
        #expect(try ownerB.call("USAGE").fields?["messages_today"] == .integer(2))
        let attacker2 = try Self.login(server, "alice@tenant-a", a.token)
        #expect(try attacker2.call("HISTORY", "general").elements?.count == 1)
        #expect(try attacker2.call("POST", pathB, "x").errorCode == "NOPERM")
        #expect(server.stop() == 0)

        // tenantctl verify reads either layout.
        let verify = Process()
        verify.executableURL = URL(
            fileURLWithPath: (TenantdProcess.binaryPath as NSString).deletingLastPathComponent + "/tenantctl"
        )
        verify.arguments = ["verify", data]
        let output = Pipe()
        verify.standardOutput = output
        try verify.run()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        verify.waitUntilExit()
        #expect(verify.terminationStatus == 0, "\(printed)")
        #expect(printed.hasPrefix("OK"), "\(printed)")
        #expect(printed.contains(strategy == "database" ? "1 rooms" : "2 tenants"), "\(printed)")

        // …and the data directory refuses every other strategy, with a clear message.
        for other in ["database", "schema", "shared"] where other != strategy {
            #expect(throws: TenantdProcessError.self) {
                _ = try TenantdProcess(dataDirectory: data, environment: ["TENANT_ISOLATION_STRATEGY": other])
            }
        }
    }

    static func timestamp(of push: RESPReply) -> Int64? {
        guard let payload = push.elements?.last?.string,
            let object = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any]
        else { return nil }
        return (object["ts"] as? NSNumber)?.int64Value
    }

    @Test(arguments: ["database", "schema", "shared"])
    func quotasAndUsageSurviveRestarts(strategy: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        let environment = ["TENANT_MAX_MESSAGES_PER_DAY": "5", "TENANT_ISOLATION_STRATEGY": strategy]
        var server = try TenantdProcess(dataDirectory: data, environment: environment)
        let admin = try Self.admin(server)
        let acme = try Self.create(admin, "acme")
        #expect(try admin.call("TENANT", "GET", acme.id).fields?["max_messages_per_day"] == .integer(5))
        let owner = try Self.login(server, "alice@acme", acme.token)
        for index in 1...5 { #expect(try owner.call("POST", "general", "m\(index)") == .integer(Int64(index))) }
        let refused = try #require(try owner.call("POST", "general", "m6").errorText)
        #expect(refused.hasPrefix("QUOTA messages_per_day 5/5 retry_after="))
        let retry = try #require(Int(refused.split(separator: "=").last ?? ""))
        #expect(retry > 0 && retry <= 86_400)
        // Users: the free plan's 10, the owner included.
        for index in 1...9 { #expect(try owner.call("USER", "ADD", "user\(index)").string?.count == 64) }
        #expect(try owner.call("USER", "ADD", "user10").errorText == "QUOTA users 10/10")
        let usage = try #require(try owner.call("USAGE").fields)
        #expect(usage["plan"]?.string == "free")
        #expect(usage["users"] == .integer(10))
        #expect(usage["max_users"] == .integer(10))
        #expect(usage["messages_today"] == .integer(5))
        #expect(usage["max_messages_per_day"] == .integer(5))
        let storage = try #require(usage["storage_bytes"]?.int)
        #expect(storage > 0)
        // Storage: a limit below what is used refuses the next write.
        #expect(
            try admin.call("TENANT", "UPDATE", acme.id, "max_storage_bytes", "100", "max_messages_per_day", "0")
                .fields?["max_storage_bytes"] == .integer(100)
        )
        #expect(try owner.call("POST", "general", "x").errorText?.hasPrefix("QUOTA storage ") == true)
        #expect(try owner.call("USER", "ADD", "late").errorCode == "QUOTA")
        #expect(server.stderrText().contains("crossed 100% of its messages_per_day limit"))
        #expect(server.stderrText().contains("crossed 80% of its users limit"))
        let storageAtStop = try #require(try owner.call("USAGE").fields?["storage_bytes"]?.int)
        #expect(storageAtStop > storage)
        #expect(server.stop() == 0)

        server = try TenantdProcess(dataDirectory: data, environment: environment)
        let again = try Self.login(server, "alice@acme", acme.token)
        let restarted = try #require(try again.call("USAGE").fields)
        #expect(restarted["messages_today"] == .integer(5))
        #expect(restarted["users"] == .integer(10))
        let restartedStorage = try #require(restarted["storage_bytes"]?.int)
        #expect(restartedStorage > 0)
        if strategy == "database" {
            // The clean stop compacted the tenant into a checkpoint: USAGE reports the directory as it is now.
            #expect(restartedStorage == directorySize(data + "/tenant_\(acme.id)"))
            #expect(restartedStorage < storageAtStop)
        } else {
            // The clean stop checkpointed the shared log: USAGE reports the tenant's share of the
            // checkpoint file, less than its records took in the log.
            #expect(restartedStorage < storageAtStop)
            #expect(restartedStorage <= directorySize(data + "/shared/checkpoint"))
        }
        #expect(restarted["max_storage_bytes"] == .integer(100))
        #expect(server.stop() == 0)
    }

    @Test(arguments: ["database", "schema", "shared"])
    func lifecycleUpdateSuspendResumeDelete(strategy: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        let environment = ["TENANT_ISOLATION_STRATEGY": strategy]
        var server = try TenantdProcess(dataDirectory: data, environment: environment)
        let admin = try Self.admin(server)
        let acme = try Self.create(admin, "acme")
        let other = try Self.create(admin, "other")
        // Subdomain rules.
        for bad in ["www", "api", "admin", "ab", "-acme", "acme-", "Acme", "a_b", String(repeating: "a", count: 64)] {
            #expect(try admin.call("TENANT", "CREATE", "x", bad).errorCode == "INVALID", "\(bad)")
        }
        #expect(try admin.call("TENANT", "CREATE", "x", "acme").errorCode == "EXISTS")
        #expect(try admin.call("TENANT", "CREATE", "x", other.id).errorCode == "EXISTS")
        // UPDATE: fields, a plan change bringing its limits, settings, bad input.
        let updated = try #require(
            try admin.call("TENANT", "UPDATE", acme.id, "name", "Acme Corp", "plan", "pro", "settings.theme", "dark")
                .fields
        )
        #expect(updated["name"]?.string == "Acme Corp")
        #expect(updated["plan"]?.string == "pro")
        #expect(updated["max_users"] == .integer(100))
        #expect(updated["max_messages_per_day"] == .integer(100_000))
        #expect(updated["settings"]?.string == #"{"theme":"dark"}"#)
        #expect((updated["updated_at"]?.int ?? 0) >= (updated["created_at"]?.int ?? .max))
        let enterprise = try #require(try admin.call("TENANT", "UPDATE", acme.id, "plan", "enterprise").fields)
        #expect(enterprise["max_users"] == .integer(0))
        #expect(try admin.call("TENANT", "UPDATE", acme.id, "max_users", "-1").errorCode == "INVALID")
        #expect(try admin.call("TENANT", "UPDATE", acme.id, "subdomain", "x").errorCode == "INVALID")
        #expect(try admin.call("TENANT", "UPDATE", acme.id, "plan", "gold").errorCode == "INVALID")
        #expect(try admin.call("TENANT", "UPDATE", "nosuch", "name", "x").errorCode == "NOTFOUND")
        #expect(try admin.call("TENANT", "UPDATE", acme.id, "name").errorCode == "ERR")

        // SUSPEND: every user command, on open connections too, answers SUSPENDED; the operator goes on.
        let owner = try Self.login(server, "alice@acme", acme.token)
        #expect(try owner.call("POST", "general", "before") == .integer(1))
        #expect(try admin.call("TENANT", "SUSPEND", acme.id) == .simple("OK"))
        #expect(try admin.call("TENANT", "GET", acme.id).fields?["is_suspended"] == .integer(1))
        for command in [["POST", "general", "x"], ["HISTORY", "general"], ["ROOMS"], ["USAGE"], ["USER", "LIST"]] {
            #expect(try owner.call(command).errorCode == "SUSPENDED", "\(command)")
        }
        #expect(try server.client().call("AUTH", "alice@acme", acme.token).errorCode == "SUSPENDED")
        #expect(try admin.call("USE", "acme") == .simple("OK"))
        #expect(try admin.call("HISTORY", "general").elements?.count == 1)
        #expect(try admin.call("TENANT", "RESUME", acme.id) == .simple("OK"))
        #expect(try owner.call("POST", "general", "after") == .integer(2))
        // is_active=0 works as a suspension too.
        _ = try admin.call("TENANT", "UPDATE", acme.id, "is_active", "0")
        #expect(try owner.call("ROOMS").errorCode == "SUSPENDED")
        _ = try admin.call("TENANT", "UPDATE", acme.id, "is_active", "1")

        // LIST with a cursor pages through every tenant once.
        var seen: [String] = []
        var cursor = "0"
        repeat {
            let page = try #require(try admin.call("TENANT", "LIST", "CURSOR", cursor, "COUNT", "1").elements)
            cursor = try #require(page[0].string)
            seen += try #require(page[1].elements).compactMap { $0.fields?["tenant_id"]?.string }
        } while cursor != "0"
        #expect(seen == [acme.id, other.id].sorted())

        // DELETE: the id twice; the directory goes (through the trash); the tenant is gone for everyone.
        #expect(try admin.call("TENANT", "DELETE", acme.id).errorCode == "ERR")
        #expect(try admin.call("TENANT", "DELETE", acme.id, other.id).errorCode == "ERR")
        #expect(try admin.call("TENANT", "DELETE", acme.id, acme.id) == .simple("OK"))
        #expect(!FileManager.default.fileExists(atPath: data + "/tenant_\(acme.id)"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: data).allSatisfy { !$0.contains(acme.id) })
        #expect(try owner.call("ROOMS").errorCode == "NOTFOUND")
        #expect(try server.client().call("AUTH", "alice@acme", acme.token).errorCode == "WRONGPASS")
        #expect(try admin.call("TENANT", "GET", acme.id).errorCode == "NOTFOUND")
        #expect(try admin.call("TENANT", "LIST").elements?.count == 1)
        // The subdomain is free again; after a restart the deleted tenant stays deleted.
        let second = try Self.create(admin, "acme")
        #expect(server.stop() == 0)
        server = try TenantdProcess(dataDirectory: data, environment: environment)
        let admin2 = try Self.admin(server)
        #expect(try admin2.call("TENANT", "GET", acme.id).errorCode == "NOTFOUND")
        #expect(try admin2.call("TENANT", "GET", "acme").fields?["tenant_id"]?.string == second.id)
        #expect(try admin2.call("TENANT", "GET", acme.id.uppercased()).errorCode == "NOTFOUND")
        #expect(server.stop() == 0)
    }

    @Test func selfSignupIsOffByDefaultAndRateLimitedWhenOn() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var server = try TenantdProcess(dataDirectory: dir.path + "/off")
        #expect(try server.client().call("TENANT", "SIGNUP", "Acme", "acme", "alice").errorCode == "NOPERM")
        #expect(server.stop() == 0)
        server = try TenantdProcess(
            dataDirectory: dir.path + "/on",
            environment: ["TENANT_SELF_SIGNUP": "true", "TENANT_SIGNUPS_PER_MINUTE": "2"]
        )
        let client = try server.client()
        let reply = try #require(try client.call("TENANT", "SIGNUP", "Acme", "acme", "alice").fields)
        let token = try #require(reply["owner_token"]?.string)
        #expect(try client.call("TENANT", "SIGNUP", "Www", "www", "alice").errorCode == "INVALID")
        // Two a minute from one address: the third is refused whatever it asks for.
        let limited = try server.client().call("TENANT", "SIGNUP", "Third", "third", "carol")
        #expect(limited.errorText?.hasPrefix("QUOTA signups_per_minute 2/2 retry_after=") == true, "\(limited)")
        let owner = try Self.login(server, "alice@acme", token)
        #expect(try owner.call("WHOAMI").elements?.last?.string == "owner")
        #expect(server.stop() == 0)
    }

    @Test func tenantIDSourcesDecideWhichReferencesWork() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var server = try TenantdProcess(
            dataDirectory: dir.path + "/data",
            environment: ["TENANT_ID_SOURCE": "subdomain"]
        )
        var admin = try Self.admin(server)
        let acme = try Self.create(admin, "acme")
        #expect(try server.client().call("AUTH", "alice@\(acme.id)", acme.token).errorCode == "WRONGPASS")
        var owner = try Self.login(server, "alice@acme.chat.example.com", acme.token)
        #expect(try owner.call("POST", "/tenant/\(acme.id)/general", "x").errorCode == "INVALID")
        #expect(try admin.call("USE", acme.id).errorCode == "NOTFOUND")
        #expect(try admin.call("USE", "acme") == .simple("OK"))
        #expect(server.stop() == 0)

        server = try TenantdProcess(dataDirectory: dir.path + "/data", environment: ["TENANT_ID_SOURCE": "header,path"])
        admin = try Self.admin(server)
        #expect(try server.client().call("AUTH", "alice@acme", acme.token).errorCode == "WRONGPASS")
        owner = try Self.login(server, "alice@\(acme.id)", acme.token)
        #expect(try owner.call("POST", "/tenant/\(acme.id)/general", "x") == .integer(1))
        #expect(try admin.call("USE", "acme").errorCode == "NOTFOUND")
        #expect(try admin.call("POST", "/tenant/\(acme.id)/general", "y") == .integer(2))
        #expect(server.stop() == 0)
    }

    @Test func autoProvisionCreatesWellFormedUnknownIdsForTheOperator() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(
            dataDirectory: dir.path + "/data",
            environment: ["TENANT_AUTO_PROVISION": "true"]
        )
        let admin = try Self.admin(server)
        #expect(try admin.call("POST", "/tenant/t42/general", "hi") == .integer(1))
        #expect(try admin.call("POST", "/tenant/t42/general", "again") == .integer(2))
        #expect(try admin.call("TENANT", "GET", "t42").fields?["plan"]?.string == "free")
        #expect(try admin.call("USE", "bench-7") == .simple("OK"))
        #expect(try admin.call("POST", "general", "x") == .integer(1))
        #expect(try admin.call("USE", "Bad_Id").errorCode == "NOTFOUND")
        // Many connections naming the same new ids at once, as redis-benchmark does: all succeed.
        let token = try server.adminToken()
        let port = server.port
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            do {
                let client = try RESPTestClient(port: port)
                guard try client.call("AUTH", token) == .simple("OK") else {
                    throw UnexpectedReply(description: "AUTH")
                }
                let replies = try client.pipeline(
                    (0..<60).map { ["POST", "/tenant/burst\($0 % 20)/general", "w\(worker)"] }
                )
                if replies.contains(where: { $0.int == nil }) { failures.withLock { $0 += 1 } }
            } catch {
                failures.withLock { $0 += 1 }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(try admin.call("HISTORY", "/tenant/burst0/general", "LIMIT", "1000").elements?.count == 24)
        #expect(try admin.call("TENANT", "LIST").elements?.count == 22)
        #expect(try admin.call("POST", "/tenant/UPPER/general", "x").errorCode == "INVALID")
        // Users never provision.
        let acme = try Self.create(admin, "acme")
        let owner = try Self.login(server, "alice@acme", acme.token)
        #expect(try owner.call("POST", "/tenant/t99/general", "x").errorCode == "NOPERM")
        #expect(try admin.call("TENANT", "GET", "t99").errorCode == "NOTFOUND")
        #expect(server.stop() == 0)
    }

    @Test func singleTenantModeAndTheMigrationToMultiTenancy() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data, environment: ["MULTI_TENANCY_ENABLED": "false"])
        let admin = try Self.admin(server)
        #expect(try admin.call("WHOAMI").elements?.first?.string == "default")
        #expect(try admin.call("POST", "general", "from the operator") == .integer(1))
        let bobToken = try #require(try admin.call("USER", "ADD", "bob", "owner").string)
        let bob = try Self.login(server, "bob", bobToken)
        #expect(
            try bob.call("WHOAMI")
                == .array([.bulk(Array("default".utf8)), .bulk(Array("bob".utf8)), .bulk(Array("owner".utf8))])
        )
        #expect(try bob.call("POST", "general", "from bob") == .integer(2))
        #expect(try bob.call("USE", "default") == .simple("OK"))
        #expect(server.stop() == 0)

        server = try TenantdProcess(dataDirectory: data)
        let migrated = try Self.login(server, "bob@default", bobToken)
        #expect(try migrated.call("HISTORY", "general").elements?.count == 2)
        #expect(try server.client().call("AUTH", "bob", bobToken).errorCode == "WRONGPASS")
        let admin2 = try Self.admin(server)
        #expect(try admin2.call("TENANT", "GET", "default").fields?["subdomain"]?.string == "default")
        let acme = try Self.create(admin2, "acme")
        #expect(server.stop() == 0)

        // Back to single-tenant: only `default` is served; acme waits untouched on disk.
        server = try TenantdProcess(dataDirectory: data, environment: ["MULTI_TENANCY_ENABLED": "false"])
        let admin3 = try Self.admin(server)
        #expect(try admin3.call("USE", "acme").errorCode == "NOTFOUND")
        #expect(try admin3.call("HISTORY", "/tenant/\(acme.id)/general").errorCode == "NOTFOUND")
        #expect(try server.client().call("AUTH", "alice@acme", acme.token).errorCode == "WRONGPASS")
        #expect(try Self.login(server, "bob", bobToken).call("HISTORY", "general").elements?.count == 2)
        #expect(server.stop() == 0)
    }

    @Test(arguments: ["database", "shared"])
    func pubSubDeliversEveryMessageOnceInOrder(strategy: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(
            dataDirectory: dir.path + "/data",
            environment: ["TENANT_ISOLATION_STRATEGY": strategy]
        )
        let admin = try Self.admin(server)
        let acme = try Self.create(admin, "acme", plan: "pro")
        let subscriber = try Self.login(server, "alice@acme", acme.token)
        #expect(
            try subscriber.call("SUBSCRIBE", "general", "/tenant/\(acme.id)/random")
                == .array([.bulk(Array("subscribe".utf8)), .bulk(Array("general".utf8)), .integer(1)])
        )
        #expect(
            try subscriber.read()
                == .array([.bulk(Array("subscribe".utf8)), .bulk(Array("/tenant/\(acme.id)/random".utf8)), .integer(2)])
        )
        // RESP2 subscribed mode takes pub/sub commands only.
        #expect(try subscriber.call("POST", "general", "x").errorCode == "ERR")
        #expect(try subscriber.call("PING") == .array([.bulk(Array("pong".utf8)), .bulk([])]))
        let writer = try Self.login(server, "alice@acme", acme.token)
        let texts = (1...300).map { "message \($0) \"quoted\" \\ ✓\n" }
        _ = try writer.pipeline(texts.map { ["POST", "general", $0] })
        #expect(try writer.call("POST", "random", "r") == .integer(1))
        for (index, text) in texts.enumerated() {
            let push = try #require(try subscriber.read().elements)
            #expect(push.count == 3 && push[0].string == "message" && push[1].string == "general")
            let payload = try #require(push[2].string)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any])
            #expect((object["seq"] as? NSNumber)?.intValue == index + 1)
            #expect(object["text"] as? String == text)
            #expect(object["user"] as? String == "alice")
        }
        let random = try #require(try subscriber.read().elements)
        #expect(random[1].string == "/tenant/\(acme.id)/random")
        #expect(
            try subscriber.call("UNSUBSCRIBE", "general")
                == .array([.bulk(Array("unsubscribe".utf8)), .bulk(Array("general".utf8)), .integer(1)])
        )
        #expect(try subscriber.call("UNSUBSCRIBE").elements?.last == .integer(0))
        #expect(try subscriber.call("POST", "general", "now allowed") == .integer(301))
        #expect(server.stop() == 0)
    }
}
