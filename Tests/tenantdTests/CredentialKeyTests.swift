import Foundation
import Logging
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
        var configuration = EngineConfiguration(dataDirectory: dir.path, fsync: .no)
        configuration.adminToken = "operator-token-0123456789abcdef-0123"
        return configuration
    }

    static func started(_ configuration: EngineConfiguration) async throws -> TenantRegistry {
        let registry = TenantRegistry(configuration: configuration, logger: Logger.quiet)
        try await registry.bootstrap()
        return registry
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
