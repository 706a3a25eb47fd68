import EngineTestSupport
import Foundation
import Logging
@_spi(Fuzzing) import TenantEngine
import TenantServer
import TestSupport
import Testing
import WAL

@Suite("Engine")
struct EngineTests {
    /// New tenants on the engine's default plan (free, with its quotas), which these tests count on.
    static func registry(_ path: String, fsync: FsyncPolicy = .always) async throws -> TenantRegistry {
        try await EngineFixtures.registry(path, fsync: fsync, defaultPlan: nil)
    }

    static func owner(
        _ registry: TenantRegistry,
        subdomain: String,
        plan: Plan? = nil
    ) async throws -> (Tenant, Principal, CreatedTenant) {
        try await EngineFixtures.owner(registry, subdomain: subdomain, plan: plan)
    }

    /// The contract code the server answers an engine error with (through its one mapping).
    static func code(_ body: () async throws -> Void) async -> ReplyCode? {
        do {
            try await body()
            return nil
        } catch let error as TenantError {
            return ReplyCode(error.kind)
        } catch {
            return nil
        }
    }

    @Test func createResolveAndAuthenticate() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            let (_, _, created) = try await Self.owner(registry, subdomain: "acme")
            let id = created.metadata.tenantID
            #expect(id.count == 8 && Names.isValidTenantID(id))
            #expect(created.metadata.plan == .free)
            #expect(created.metadata.maxUsers == 10)
            #expect(created.metadata.maxStorageBytes == 5 * (1 << 30))
            #expect(created.metadata.maxMessagesPerDay == 1000)
            #expect(await registry.resolve(id) == id)
            #expect(await registry.resolve("acme") == id)
            #expect(await registry.resolve("acme.chat.example.com") == id)
            #expect(await registry.resolve("ACME") == id)
            #expect(await registry.resolve("www.chat.example.com") == nil)
            #expect(await registry.resolve("unknown") == nil)
            let tenant = try await registry.tenant(id: id)
            #expect(await Self.code { _ = try await tenant.authenticate(user: "alice", token: "wrong") } == .wrongPass)
            #expect(
                await Self.code { _ = try await tenant.authenticate(user: "bob", token: created.ownerToken) }
                    == .wrongPass
            )
            #expect(await registry.isOperatorToken(EngineFixtures.operatorToken))
            // A near miss: the token with its last character changed, and the token in capitals.
            #expect(await !registry.isOperatorToken(String(EngineFixtures.operatorToken.dropLast()) + "4"))
            #expect(await !registry.isOperatorToken(EngineFixtures.operatorToken.uppercased()))
            await registry.shutdown()
        }
    }

    @Test(arguments: [
        "ab", "www", "api", "admin", "-acme", "acme-", "Acme", "ac_me", "a..b", String(repeating: "a", count: 64),
    ])
    func invalidSubdomainsAreRefused(subdomain: String) async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            #expect(
                await Self.code {
                    _ = try await registry.createTenant(name: "x", subdomain: subdomain, plan: nil, owner: "o")
                } == .invalid
            )
            await registry.shutdown()
        }
    }

    @Test func takenSubdomainIsExists() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            _ = try await Self.owner(registry, subdomain: "acme")
            #expect(await Self.code { _ = try await Self.owner(registry, subdomain: "acme") } == .exists)
            await registry.shutdown()
        }
    }

    @Test func historyWindows() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path, fsync: .no)
            let (tenant, alice, _) = try await Self.owner(registry, subdomain: "acme")
            for index in 1...250 {
                #expect(try await tenant.postAndCommit(alice, room: "general", text: "m\(index)") == UInt64(index))
            }
            func seqs(after: UInt64? = nil, before: UInt64? = nil, limit: Int = 100) async throws -> [UInt64] {
                try await tenant.history(alice, room: "general", after: after, before: before, limit: limit).map(\.seq)
            }
            #expect(try await seqs() == Array(151...250))
            #expect(try await seqs(limit: 3) == [248, 249, 250])
            #expect(try await seqs(after: 0, limit: 3) == [1, 2, 3])
            #expect(try await seqs(after: 248, limit: 10) == [249, 250])
            #expect(try await seqs(after: 250) == [])
            #expect(try await seqs(after: 9999) == [])
            #expect(try await seqs(before: 4, limit: 10) == [1, 2, 3])
            #expect(try await seqs(before: 101, limit: 2) == [99, 100])
            #expect(try await seqs(before: 1) == [])
            #expect(try await seqs(before: 9999, limit: 1) == [250])
            #expect(try await seqs(limit: 5000).count == 250)
            #expect(try await seqs(limit: 0) == [])
            #expect(try await tenant.history(alice, room: "nobody-here", after: nil, before: nil, limit: 10).isEmpty)
            let messages = try await tenant.history(alice, room: "general", after: nil, before: nil, limit: 1)
            #expect(messages.first?.user == "alice")
            #expect(messages.first?.text == "m250")
            let rooms = try await tenant.rooms(alice)
            #expect(rooms == [RoomSummary(room: "general", lastSeq: 250, messageCount: 250)])
            await registry.shutdown()
        }
    }

    @Test func historyIsCappedAtAThousand() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path, fsync: .no)
            let (tenant, alice, _) = try await Self.owner(registry, subdomain: "acme", plan: .enterprise)
            var tickets: [PostTicket] = []
            for index in 0..<1200 { tickets.append(try await tenant.post(alice, room: "r", text: "\(index)")) }
            for ticket in tickets { _ = try await tenant.commit(ticket) }
            #expect(try await tenant.history(alice, room: "r", after: nil, before: nil, limit: 5000).count == 1000)
            await registry.shutdown()
        }
    }

    @Test func postValidation() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            let (tenant, alice, _) = try await Self.owner(registry, subdomain: "acme")
            for room in ["", "bad room", "../etc", "a/b", String(repeating: "r", count: 129), "é"] {
                #expect(
                    await Self.code { _ = try await tenant.postAndCommit(alice, room: room, text: "x") } == .invalid
                )
            }
            #expect(try await tenant.postAndCommit(alice, room: String(repeating: "r", count: 128), text: "x") == 1)
            #expect(
                try await tenant.postAndCommit(alice, room: "a.b_c:d-E9", text: String(repeating: "é", count: 32768))
                    == 1
            )
            #expect(
                await Self.code {
                    _ = try await tenant.postAndCommit(alice, room: "r", text: String(repeating: "x", count: 65537))
                } == .tooBig
            )
            await registry.shutdown()
        }
    }

    @Test func rolesAndTheLastOwner() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            let (tenant, alice, _) = try await Self.owner(registry, subdomain: "acme")
            let adminToken = try await tenant.addUser(alice, name: "ann", role: .admin)
            let memberToken = try await tenant.addUser(alice, name: "mo", role: .member)
            let ann = try await tenant.authenticate(user: "ann", token: adminToken)
            let mo = try await tenant.authenticate(user: "mo", token: memberToken)
            // Members manage no one.
            #expect(await Self.code { _ = try await tenant.addUser(mo, name: "x", role: .member) } == .noPerm)
            #expect(await Self.code { _ = try await tenant.listUsers(mo) } == .noPerm)
            // Admins manage members only.
            _ = try await tenant.addUser(ann, name: "m2", role: .member)
            #expect(await Self.code { _ = try await tenant.addUser(ann, name: "a2", role: .admin) } == .noPerm)
            #expect(await Self.code { try await tenant.setRole(ann, name: "m2", role: .owner) } == .noPerm)
            #expect(await Self.code { try await tenant.deleteUser(ann, name: "alice") } == .noPerm)
            try await tenant.deleteUser(ann, name: "m2")
            #expect(await Self.code { try await tenant.deleteUser(ann, name: "m2") } == .notFound)
            // Names and duplicates.
            #expect(await Self.code { _ = try await tenant.addUser(alice, name: "mo", role: .member) } == .exists)
            #expect(await Self.code { _ = try await tenant.addUser(alice, name: "..", role: .member) } == .invalid)
            #expect(await Self.code { _ = try await tenant.addUser(alice, name: "a@b", role: .member) } == .invalid)
            // The last owner stays.
            #expect(await Self.code { try await tenant.deleteUser(alice, name: "alice") } == .invalid)
            #expect(await Self.code { try await tenant.setRole(alice, name: "alice", role: .member) } == .invalid)
            try await tenant.setRole(alice, name: "ann", role: .owner)
            try await tenant.setRole(alice, name: "alice", role: .admin)
            #expect(try await tenant.listUsers(ann).map(\.name) == ["alice", "ann", "mo"])
            await registry.shutdown()
        }
    }

    @Test func rotatedOrDeletedCredentialStopsWorkingAtOnce() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            let (tenant, alice, _) = try await Self.owner(registry, subdomain: "acme")
            let token = try await tenant.addUser(alice, name: "mo", role: .member)
            let mo = try await tenant.authenticate(user: "mo", token: token)
            _ = try await tenant.postAndCommit(mo, room: "r", text: "hi")
            let newToken = try await tenant.rotateToken(alice, name: "mo")
            #expect(newToken != token)
            #expect(await Self.code { _ = try await tenant.postAndCommit(mo, room: "r", text: "x") } == .noAuth)
            #expect(await Self.code { _ = try await tenant.authenticate(user: "mo", token: token) } == .wrongPass)
            let fresh = try await tenant.authenticate(user: "mo", token: newToken)
            _ = try await tenant.postAndCommit(fresh, room: "r", text: "again")
            try await tenant.deleteUser(alice, name: "mo")
            #expect(
                await Self.code { _ = try await tenant.history(fresh, room: "r", after: nil, before: nil, limit: 1) }
                    == .noAuth
            )
            await registry.shutdown()
        }
    }

    @Test func principalOfOneTenantIsRefusedByAnother() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            let (_, aliceA, createdA) = try await Self.owner(registry, subdomain: "tenant-a")
            let (tenantB, _, _) = try await Self.owner(registry, subdomain: "tenant-b")
            // The same user name in B with A's token: refused.
            #expect(
                await Self.code { _ = try await tenantB.authenticate(user: "alice", token: createdA.ownerToken) }
                    == .wrongPass
            )
            // A principal authenticated by A: B refuses it to post, read, list rooms and manage users.
            #expect(await Self.code { _ = try await tenantB.postAndCommit(aliceA, room: "r", text: "x") } == .noPerm)
            #expect(
                await Self.code { _ = try await tenantB.history(aliceA, room: "r", after: nil, before: nil, limit: 1) }
                    == .noPerm
            )
            #expect(await Self.code { _ = try await tenantB.rooms(aliceA) } == .noPerm)
            #expect(await Self.code { _ = try await tenantB.addUser(aliceA, name: "evil", role: .owner) } == .noPerm)
            #expect(await Self.code { _ = try await tenantB.listUsers(aliceA) } == .noPerm)
            #expect(await Self.code { _ = try await tenantB.rotateToken(aliceA, name: "alice") } == .noPerm)
            #expect(try await tenantB.listUsers(.operator).map(\.name) == ["alice"])
            await registry.shutdown()
        }
    }

    @Test func everythingSurvivesARestartAndTheCatalogRebuilds() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path)
            let (tenant, alice, created) = try await Self.owner(registry, subdomain: "acme")
            let memberToken = try await tenant.addUser(alice, name: "mo", role: .member)
            for index in 1...50 {
                _ = try await tenant.postAndCommit(alice, room: "room\(index % 3)", text: "text \(index)")
            }
            let before = try await tenant.rooms(alice)
            await registry.shutdown()

            // The catalog is a cache: without it the tenant directories give the same tenants back.
            try FileManager.default.removeItem(atPath: dir.path + "/catalog")
            let reopened = try await Self.registry(dir.path)
            let id = created.metadata.tenantID
            #expect(await reopened.resolve("acme") == id)
            let again = try await reopened.tenant(id: id)
            #expect(await again.metadata == created.metadata)
            let alice2 = try await again.authenticate(user: "alice", token: created.ownerToken)
            _ = try await again.authenticate(user: "mo", token: memberToken)
            #expect(try await again.rooms(alice2) == before)
            #expect(try await again.postAndCommit(alice2, room: "room1", text: "after") == 18)
            await reopened.shutdown()
        }
    }

    /// 300 concurrent posts get every seq from 1 to 300 once, and the history holds them in seq order.
    /// That they share group commits is not observed here (no count of log syncs).
    @Test func concurrentPostsShareGroupCommitsAndKeepSeqOrder() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path, fsync: .always)
            let (tenant, alice, _) = try await Self.owner(registry, subdomain: "acme")
            let seqs = try await withThrowingTaskGroup(of: UInt64.self) { group in
                for index in 0..<300 {
                    group.addTask { try await tenant.postAndCommit(alice, room: "r", text: "\(index)") }
                }
                return try await group.reduce(into: [UInt64]()) { $0.append($1) }
            }
            #expect(seqs.sorted() == Array(1...300))
            let history = try await tenant.history(alice, room: "r", after: 0, before: nil, limit: 1000)
            #expect(history.map(\.seq) == Array(1...300))
            await registry.shutdown()
        }
    }

    @Test func listingPagesThroughThousandsOfTenantsOnceEach() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await EngineFixtures.registry(dir.path, fsync: .no, defaultPlan: nil) {
                $0.isolation = .schema
            }
            let count = 3000
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<count {
                    group.addTask {
                        _ = try await registry.createTenant(
                            name: "t\(index)",
                            subdomain: "sub-\(index)",
                            plan: nil,
                            owner: "o"
                        )
                    }
                }
                try await group.waitForAll()
            }
            var seen: [String] = []
            var cursor = "0"
            repeat {
                let page = await registry.listTenants(after: cursor, count: 1000)
                #expect(page.tenants.count <= 1000)
                seen += page.tenants.map(\.tenantID)
                cursor = page.next
            } while cursor != "0"
            #expect(seen.count == count)
            #expect(seen == seen.sorted())
            #expect(Set(seen).count == count)
            #expect(await registry.listTenants().count == count)
            await registry.shutdown()
        }
    }

    @Test func concurrentCreationsAllLandInTheCatalog() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.registry(dir.path, fsync: .no)
            let ids = try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        try await registry.createTenant(
                            name: "t\(index)",
                            subdomain: "sub-\(index)",
                            plan: nil,
                            owner: "o"
                        )
                        .metadata.tenantID
                    }
                }
                return try await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
            #expect(ids.count == 200)
            await registry.shutdown()
            // The catalog file written last holds every tenant.
            let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.path + "/catalog/tenants.bin"))
            #expect(DecoderEntryPoints.decodeCatalog(Array(bytes)) == 200)
            let reopened = try await Self.registry(dir.path)
            #expect(Set(await reopened.listTenants().map(\.tenantID)) == ids)
            await reopened.shutdown()
        }
    }

    @Test func aDamagedStrategyFileIsDecidedByTheLayout() async throws {
        try await TemporaryDirectory.with { dir in
            var registry = try await Self.registry(dir.path)
            let (_, _, created) = try await Self.owner(registry, subdomain: "acme")
            await registry.shutdown()
            try Data([0xFF, 0x00, 0x13]).write(to: URL(fileURLWithPath: dir.path + "/strategy"))
            registry = try await Self.registry(dir.path)
            #expect(await registry.resolve("acme") == created.metadata.tenantID)
            await registry.shutdown()
            #expect(try String(contentsOfFile: dir.path + "/strategy", encoding: .utf8) == "database\n")
            // The layout still refuses another strategy.
            try Data("garbage".utf8).write(to: URL(fileURLWithPath: dir.path + "/strategy"))
            var configuration = EngineConfiguration(dataDirectory: dir.path, fsync: .no)
            configuration.isolation = .shared
            let other = TenantRegistry(configuration: configuration, logger: Logger.quiet)
            await #expect(throws: TenantError.self) { try await other.bootstrap() }
        }
    }
}
