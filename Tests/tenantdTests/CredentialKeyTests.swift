import EngineTestSupport
import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// Issue 25, findings 1 and 4: AUTH is filtered by the catalog's credential keys before any tenant
/// opens, the keys follow every user change durably (across restarts and a lost catalog), and ids
/// and subdomains are one namespace.
@Suite("Credential keys and names", .serialized)
struct CredentialKeyTests {
    static func configuration(_ dir: TemporaryDirectory) -> EngineConfiguration {
        Self.configuration(TemporaryDirectory.Path(dir.path))
    }

    static func configuration(_ dir: TemporaryDirectory.Path) -> EngineConfiguration {
        EngineFixtures.configuration(dir.path, fsync: .no, defaultPlan: nil)
    }

    static func started(_ configuration: EngineConfiguration) async throws -> TenantRegistry {
        try await EngineFixtures.registry(configuration)
    }

    @Test func aWrongTokenIsRefusedWithoutOpeningTheTenant() async throws {
        try await TemporaryDirectory.with { dir in
            let configuration = Self.configuration(dir)
            var registry = try await Self.started(configuration)
            let created = try await registry.createTenant(name: "Acme", subdomain: "acme", plan: nil, owner: "alice")
            let id = created.metadata.tenantID
            let tenant = try await registry.tenant(id: id)
            let bobToken = try await tenant.addUser(.operator, name: "bob", role: .member)
            let carolToken = try await tenant.addUser(.operator, name: "carol", role: .member)
            _ = try await tenant.rotateToken(.operator, name: "carol")
            try await tenant.deleteUser(.operator, name: "bob")
            await registry.shutdown()

            for removeCatalog in [false, true] {
                if removeCatalog { try FileManager.default.removeItem(atPath: dir.path + "/catalog") }
                registry = try await Self.started(configuration)
                #expect(await registry.activeCount == 0)
                let alice = await registry.mayAuthenticate(
                    id: id,
                    user: "alice",
                    tokenHash: Tokens.hash(created.ownerToken)
                )
                #expect(alice, "catalog removed: \(removeCatalog)")
                // A wrong token, a deleted user's and a rotated-away token: refused, nothing opened.
                for (user, token) in [("alice", "wrong"), ("bob", bobToken), ("carol", carolToken), ("nobody", "x")] {
                    #expect(!(await registry.mayAuthenticate(id: id, user: user, tokenHash: Tokens.hash(token))))
                }
                // alice's token under another name is another key.
                #expect(
                    !(await registry.mayAuthenticate(id: id, user: "alicf", tokenHash: Tokens.hash(created.ownerToken)))
                )
                #expect(await registry.activeCount == 0)
                await registry.shutdown()
            }
        }
    }

    @Test func aCatalogOfTheEarlierVersionIsReadAndItsKeysLearnt() throws {
        var catalog = Catalog()
        let metadata = TenantMetadata(
            tenantID: "abc",
            name: "A",
            subdomain: "acme",
            plan: .free,
            limits: Plan.free.defaultLimits,
            now: 0
        )
        catalog.insert(metadata)
        let key = CredentialKey(user: "alice", tokenHash: Tokens.hash("t"))
        catalog.setCredentials([key], for: "abc")
        let decoded = try #require(Catalog.decode(bytes: try catalog.encoded()))
        #expect(decoded.admits(key, to: "abc") == true)
        #expect(decoded.admits(CredentialKey(user: "alice", tokenHash: Tokens.hash("u")), to: "abc") == false)
        // The same bytes under version 1's magic and without the key fields: keys unknown.
        let old = try #require(Catalog.decode(bytes: try Self.version1(of: [metadata])))
        #expect(old.entries["abc"] != nil)
        #expect(old.admits(key, to: "abc") == nil)
    }

    /// The catalog file of an earlier version listing `tenants` (no credential keys).
    static func version1(of tenants: [TenantMetadata]) throws -> [UInt8] {
        var bytes = [UInt8]()
        var body = [UInt8]()
        for metadata in tenants {
            var one = Catalog()
            one.insert(metadata)
            let encoded = try one.encoded()
            // One entry: after the count (1, one byte) up to its credential flag and count.
            body += encoded[(Catalog.headerSize + 1)..<(encoded.count - 2)]
        }
        var writer = BinaryWriter()
        writer.writeVarint(UInt64(tenants.count))
        body = writer.bytes + body
        bytes = Array("TNTDCAT1".utf8)
        withUnsafeBytes(of: UInt64(body.count).littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: CRC32C.mask(CRC32C.checksum(body)).littleEndian) { bytes.append(contentsOf: $0) }
        return bytes + body
    }

    /// A data directory whose catalog is of the earlier version: start-up reads each tenant once
    /// to learn its keys, then no AUTH needs to open it.
    @Test func aStartOnAnEarlierCatalogLearnsTheKeys() async throws {
        try await TemporaryDirectory.with { dir in
            let configuration = Self.configuration(dir)
            var registry = try await Self.started(configuration)
            let created = try await registry.createTenant(name: "Acme", subdomain: "acme", plan: nil, owner: "alice")
            await registry.shutdown()
            let file = dir.path + "/catalog/tenants.bin"
            try Data(try Self.version1(of: [created.metadata])).write(to: URL(fileURLWithPath: file))
            registry = try await Self.started(configuration)
            #expect(await registry.activeCount == 0)
            let id = created.metadata.tenantID
            #expect(
                await registry.mayAuthenticate(id: id, user: "alice", tokenHash: Tokens.hash(created.ownerToken))
            )
            #expect(!(await registry.mayAuthenticate(id: id, user: "alice", tokenHash: Tokens.hash("wrong"))))
            await registry.shutdown()
            // The catalog was written again in the current version, with the keys.
            let rewritten = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            #expect(rewritten.starts(with: Catalog.magic))
        }
    }

    @Test func aCatalogWhereAnIdIsAnotherTenantsSubdomainIsNotTrusted() throws {
        var catalog = Catalog()
        for (id, subdomain) in [("abc", "victimco"), ("victimco", "impostor")] {
            catalog.insert(
                TenantMetadata(
                    tenantID: id,
                    name: id,
                    subdomain: subdomain,
                    plan: .free,
                    limits: Plan.free.defaultLimits,
                    now: 0
                )
            )
        }
        #expect(Catalog.decode(bytes: try catalog.encoded()) == nil)
    }

    /// The catalog lost, two directories name each other (a planted one whose id sorts first and
    /// whose subdomain is the victim's id): neither is served, whichever start-up reads first.
    @Test func aRebuiltCatalogServesNeitherOfTwoClashingDirectories() async throws {
        try await TemporaryDirectory.with { dir in
            let victimDirectory = TemporaryDirectory.Path(dir.path + "/victim")
            let plantedDirectory = TemporaryDirectory.Path(dir.path + "/planted")
            var registry = try await Self.started(Self.configuration(victimDirectory))
            let victim = try await registry.createTenant(name: "V", subdomain: "victimco", plan: nil, owner: "alice")
            let victimID = victim.metadata.tenantID
            await registry.shutdown()
            let planted = try await Self.started(Self.configuration(plantedDirectory))
            _ = try await planted.create(id: "0000", name: "P", subdomain: victimID, plan: nil, owner: "eve")
            await planted.shutdown()
            try FileManager.default.moveItem(
                atPath: plantedDirectory.path + "/tenant_0000",
                toPath: victimDirectory.path + "/tenant_0000"
            )
            try FileManager.default.removeItem(atPath: victimDirectory.path + "/catalog")
            registry = try await Self.started(Self.configuration(victimDirectory))
            #expect(await registry.resolveAny(victimID) == nil)
            #expect(await registry.resolveAny("0000") == nil)
            #expect(await registry.resolveAny("victimco") == nil)
            #expect(await registry.listTenants().isEmpty)
            await registry.shutdown()

            // With the catalog intact, the tenant it lists keeps its name and the newcomer is refused.
            try FileManager.default.moveItem(
                atPath: victimDirectory.path + "/tenant_0000",
                toPath: plantedDirectory.path + "/tenant_0000"
            )
            registry = try await Self.started(Self.configuration(victimDirectory))
            #expect(await registry.resolveAny("victimco") == victimID)
            try FileManager.default.moveItem(
                atPath: plantedDirectory.path + "/tenant_0000",
                toPath: victimDirectory.path + "/tenant_0000"
            )
            await registry.shutdown()
            registry = try await Self.started(Self.configuration(victimDirectory))
            #expect(await registry.resolveAny(victimID) == victimID)
            #expect(await registry.resolveAny("victimco") == victimID)
            #expect(await registry.listTenants().map(\.tenantID) == [victimID])
            await registry.shutdown()
        }
    }

    @Test func idsAndSubdomainsAreOneNamespace() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await Self.started(Self.configuration(dir))
            let victim = try await registry.createTenant(name: "V", subdomain: "victimco", plan: nil, owner: "alice")
            // An id equal to a subdomain, and a subdomain equal to an id, are taken.
            await #expect(throws: TenantError.self) {
                _ = try await registry.create(id: "victimco", name: "I", subdomain: "impostor", plan: nil, owner: "eve")
            }
            await #expect(throws: TenantError.self) {
                _ = try await registry.create(
                    id: "other",
                    name: "I",
                    subdomain: victim.metadata.tenantID,
                    plan: nil,
                    owner: "eve"
                )
            }
            #expect(await registry.resolve("victimco") == victim.metadata.tenantID)
            await registry.shutdown()
        }
    }
}

extension TemporaryDirectory {
    /// A directory under a temporary one, by its path.
    struct Path {
        let path: String
        init(_ path: String) { self.path = path }
    }
}

/// The credential journal: user changes are durable in a record each, replayed over the catalog
/// at start-up, and compacted into it without losing a record.
@Suite("Credential journal", .serialized)
struct CredentialJournalTests {
    @Test func recordsRoundTripAndATornTailEndsTheReplay() throws {
        let changes: [(String, CredentialChange)] = [
            ("abc", CredentialChange(removed: nil, added: CredentialKey(value: 1))),
            ("abc", CredentialChange(removed: CredentialKey(value: 1), added: CredentialKey(value: 2))),
            ("d-9", CredentialChange(removed: CredentialKey(value: .max), added: nil)),
        ]
        let bytes = changes.flatMap { CredentialJournal.encode(id: $0.0, change: $0.1) }
        let decoded = CredentialJournal.decode(bytes)
        #expect(decoded.map(\.0) == changes.map(\.0))
        #expect(decoded.map(\.1) == changes.map(\.1))
        // Torn anywhere in the last record: the ones before it, no more.
        let last = CredentialJournal.encode(id: "d-9", change: changes[2].1).count
        for cut in 1..<last {
            #expect(CredentialJournal.decode(Array(bytes.dropLast(cut))).count == 2)
        }
        // A flipped byte in the second record ends the replay there.
        var damaged = bytes
        damaged[CredentialJournal.encode(id: "abc", change: changes[0].1).count + 9] ^= 0x40
        #expect(CredentialJournal.decode(damaged).count == 1)
    }

    /// A started registry (no user limit) with tenant `acme`; its configuration and the id.
    static func acme(_ dir: TemporaryDirectory) async throws -> (EngineConfiguration, TenantRegistry, String) {
        var configuration = CredentialKeyTests.configuration(dir)
        configuration.maxUsers = 0
        let registry = try await CredentialKeyTests.started(configuration)
        let created = try await registry.createTenant(name: "Acme", subdomain: "acme", plan: nil, owner: "alice")
        return (configuration, registry, created.metadata.tenantID)
    }

    @Test func userChangesAreJournalledNotWrittenIntoTheCatalog() async throws {
        try await TemporaryDirectory.with { dir in
            var (configuration, registry, id) = try await Self.acme(dir)
            await registry.flushCatalog()
            let catalogFile = dir.path + "/catalog/tenants.bin"
            let before = try Data(contentsOf: URL(fileURLWithPath: catalogFile))
            let tenant = try await registry.tenant(id: id)
            var tokens: [String] = []
            for index in 0..<20 { tokens.append(try await tenant.addUser(.operator, name: "u\(index)", role: .member)) }
            // The catalog file is as it was; the journal holds 20 records.
            #expect(try Data(contentsOf: URL(fileURLWithPath: catalogFile)) == before)
            let journal = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir.path + "/catalog/credentials.log")))
            #expect(CredentialJournal.decode(journal).count == 20)
            // As a crash would leave it: no shutdown, the catalog without the keys. A new
            // registry replays the journal, and every new user is admitted without an open.
            registry = try await CredentialKeyTests.started(configuration)
            #expect(await registry.activeCount == 0)
            for (index, token) in tokens.enumerated() {
                #expect(await registry.mayAuthenticate(id: id, user: "u\(index)", tokenHash: Tokens.hash(token)))
            }
            // A clean stop writes the catalog and leaves no journal.
            await registry.shutdown()
            #expect(!FileManager.default.fileExists(atPath: dir.path + "/catalog/credentials.log"))
            #expect(!FileManager.default.fileExists(atPath: dir.path + "/catalog/credentials.old"))
            registry = try await CredentialKeyTests.started(configuration)
            #expect(await registry.mayAuthenticate(id: id, user: "u7", tokenHash: Tokens.hash(tokens[7])))
            await registry.shutdown()
        }
    }

    @Test func aCompactionLosesNoRecordWrittenWhileItRuns() async throws {
        try await TemporaryDirectory.with { dir in
            var (configuration, registry, id) = try await Self.acme(dir)
            let tenant = try await registry.tenant(id: id)
            // Past 1 MiB of journal (about 45 bytes a record) compactions run while users are
            // added from several tasks at once.
            let tokens = try await withThrowingTaskGroup(of: [(String, String)].self) { group in
                for task in 0..<4 {
                    group.addTask {
                        var made: [(String, String)] = []
                        for index in 0..<8000 {
                            let name = "t\(task)-\(index)"
                            made.append((name, try await tenant.rotateOrAdd(name)))
                        }
                        return made
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(tokens.count == 32_000)
            // 32,000 records of 37 bytes passed 1 MiB: the journal was started again at least once.
            let journal = dir.path + "/catalog/credentials.log"
            let size = (try? FileManager.default.attributesOfItem(atPath: journal)[.size] as? Int) ?? 0
            #expect(size < 32_000 * 37, "no compaction: the journal holds \(size) bytes")
            // A crash now (no shutdown): the catalog and whatever journals are there must admit all.
            registry = try await CredentialKeyTests.started(configuration)
            var missing = 0
            for (name, token) in tokens
            where !(await registry.mayAuthenticate(id: id, user: name, tokenHash: Tokens.hash(token))) {
                missing += 1
            }
            #expect(missing == 0)
            await registry.shutdown()
        }
    }
}

extension Tenant {
    /// Adds a user for the compaction test (a plan without a user limit is not needed: the
    /// operator's limits are the configuration's).
    fileprivate func rotateOrAdd(_ name: String) async throws -> String {
        try await self.addUser(.operator, name: name, role: .member)
    }
}

/// Issue 25, finding 7: staging a source abandoned is removed after ten idle minutes when another
/// migration begins (a prepared one is kept), on the registry's clock.
@Suite("Abandoned staging")
struct AbandonedStagingTests {
    @Test func anIdleUnpreparedStagingIsDroppedWhenAnotherMigrationBegins() async throws {
        try await TemporaryDirectory.with { dir in
            let clock = PassivationTests.ManualClock()
            var configuration = CredentialKeyTests.configuration(dir)
            configuration.clock = { clock.now.withLock { $0 } }
            let registry = try await CredentialKeyTests.started(configuration)
            _ = try await registry.receiveBegin(id: "gone1", migration: "a1")
            let bytes = [UInt8](repeating: 7, count: 1000)
            try await registry.receiveChunk(
                id: "gone1",
                migration: "a1",
                path: "wal/x",
                offset: 0,
                crc: bytes.withUnsafeBytes { CRC32C.checksum($0) },
                bytes: bytes
            )
            let staging = DataLayout(root: dir.path).incomingDirectory("gone1")
            #expect(FileManager.default.fileExists(atPath: staging))
            // Nine minutes: still there when another begins.
            clock.advance(seconds: 9 * 60)
            _ = try await registry.receiveBegin(id: "other1", migration: "b1")
            #expect(FileManager.default.fileExists(atPath: staging))
            // Past ten: removed, and its id is free to begin again.
            clock.advance(seconds: 2 * 60)
            _ = try await registry.receiveBegin(id: "other2", migration: "b2")
            #expect(!FileManager.default.fileExists(atPath: staging))
            await #expect(throws: TenantError.self) {
                try await registry.receiveChunk(
                    id: "gone1",
                    migration: "a1",
                    path: "wal/x",
                    offset: 0,
                    crc: 0,
                    bytes: []
                )
            }
            await registry.shutdown()
        }
    }
}
