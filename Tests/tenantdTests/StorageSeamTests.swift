import Foundation
import TestSupport
import Testing

@testable import TenantEngine

/// The storage seam's capabilities (issue 22, point 1): what only tenants with a directory of
/// their own can do hangs on ``TenantStore/directories`` and ``TenantJournal/ownLog``, which
/// `makeStore` gives the `database` strategy alone; every directory command under the other
/// strategies is refused with INVALID, naming the strategy, and changes nothing.
@Suite("The storage seam")
struct StorageSeamTests {
    @Test(arguments: [IsolationStrategy.database, .schema, .shared])
    func onlyTheDatabaseStrategyHasTenantDirectories(strategy: IsolationStrategy) async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let registry = try await StorageCrashTests.registry(dir.path + "/data", strategy: strategy)
        let hasDirectories = strategy == .database
        #expect(registry.hasTenantDirectories == hasDirectories)
        let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
        let id = created.metadata.tenantID
        let tenant = try await registry.tenant(id: id)
        let ownLog = await tenant.journal.ownLog
        #expect((ownLog != nil) == hasDirectories)
        #expect(registry.region(of: id) == "")

        func refused(_ what: String, _ body: () async throws -> Void) async {
            do {
                try await body()
                Issue.record("\(what) under \(strategy) was not refused")
            } catch let error as TenantError {
                #expect(error.kind == .invalid, "\(what): \(error)")
                #expect(error.message.contains("database strategy"), "\(what): \(error.message)")
            } catch {
                Issue.record("\(what): \(error)")
            }
        }
        let snapshots = dir.path + "/snapshots"
        try FileManager.default.createDirectory(atPath: snapshots, withIntermediateDirectories: true)
        if hasDirectories {
            let (path, _) = try await registry.snapshotTenant(id: id, destination: snapshots)
            #expect(FileManager.default.fileExists(atPath: path))
            try await registry.reopenTenant(id: id)
        } else {
            await refused("SNAPSHOT") { _ = try await registry.snapshotTenant(id: id, destination: snapshots) }
            await refused("REOPEN") { try await registry.reopenTenant(id: id) }
            await refused("ATTACH") { _ = try await registry.attachTenant(id: "other") }
            await refused("DETACH") { try await registry.detachTenant(id: id) }
            await refused("MOVE") { try await registry.moveTenant(id: id, region: "") }
            await refused("CREATE in a region") {
                _ = try await registry.createTenant(
                    name: "B",
                    subdomain: "bravo",
                    plan: nil,
                    owner: "bob",
                    region: "eu"
                )
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: snapshots).isEmpty)
            // Nothing refused changed what is served.
            #expect(await registry.listTenants().map(\.subdomain) == ["acme"])
        }
        let served = try await registry.tenant(id: id)
        let alice = try await served.authenticate(user: "alice", token: created.ownerToken)
        #expect(try await served.postAndCommit(alice, room: "r", text: "still here") == 1)
        await registry.shutdown()
    }
}
