import EngineTestSupport
import Foundation
import Logging
import TestSupport
import Testing
import WAL

@testable import TenantEngine

#if canImport(Glibc)
import Glibc
#endif

/// TENANT CREATE writes a tenant's first records once, through the file layer, with one writer
/// the tenant keeps; a fault at any step leaves no tenant and nothing half made.
@Suite("Tenant creation")
struct CreationTests {
    static func registry(_ path: String, disk: FaultyFileSystem) async throws -> TenantRegistry {
        try await EngineFixtures.registry(path, fsync: .everysec) { $0.fileSystem = disk }
    }

    @Test func theFirstRecordsAreWrittenOnceAndTheirWriterServesTheTenant() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let registry = try await Self.registry(dir.path, disk: disk)
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            let tenant = try await registry.tenant(id: created.metadata.tenantID)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            #expect(try await tenant.postAndCommit(alice, room: "general", text: "first") == 1)
            // One segment, made once: the creation's writer took the POST, nothing was reopened.
            let wal = dir.path + "/tenant_\(created.metadata.tenantID)/wal"
            #expect(try FileManager.default.contentsOfDirectory(atPath: wal).count == 1)
            #expect(disk.calls(.createSegment) == 1)
            // One rename, of the staging directory into place.
            #expect(disk.trace.filter { $0.hasPrefix("rename ") && $0.contains("/.creating-") }.count == 1)
            #expect(disk.trace.filter { $0.hasPrefix("rename ") && !$0.hasSuffix(".tmp") }.count == 1)
            // Durable before the rename, whatever the policy (everysec here).
            #expect(disk.calls(.sync) >= 1)
            await registry.shutdown()
            // And it is all there on a restart.
            let again = try await Self.registry(dir.path, disk: FaultyFileSystem())
            let reopened = try await again.tenant(id: created.metadata.tenantID)
            let history = try await reopened.history(alice, room: "general", after: 0, before: nil, limit: 10)
            #expect(history.map(\.text) == ["first"])
            await again.shutdown()
        }
    }

    @Test(arguments: [
        (FaultyFileSystem.Operation.createSegment, 0), (.write, 0), (.sync, 0), (.syncDirectory, 0),
        (.syncDirectory, 1), (.syncDirectory, 2), (.rename, 0), (.syncDirectory, 3),
    ])
    func aFaultAtAnyStepOfACreationLeavesNoTenant(operation: FaultyFileSystem.Operation, skip: Int) async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let registry = try await Self.registry(dir.path, disk: disk)
            await registry.flushCatalog()
            disk.fail(operation, after: skip, errno: EIO)
            await #expect(throws: TenantError.self) {
                _ = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            }
            #expect(disk.calls(operation) > skip, "the fault was never reached")
            disk.clearFaults()
            // Nothing half made: no tenant directory, no staging directory, no catalog entry.
            let listing = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            #expect(!listing.contains { $0.hasPrefix("tenant_") || $0.hasPrefix(".creating-") }, "\(listing)")
            #expect(await registry.tenantCount == 0)
            // The subdomain is free, and a creation now succeeds and survives a restart.
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            await registry.shutdown()
            let again = try await Self.registry(dir.path, disk: FaultyFileSystem())
            #expect(await again.resolve("acme") == created.metadata.tenantID)
            #expect(await again.tenantCount == 1)
            await again.shutdown()
        }
    }
}

/// TENANT DELETE through the file layer: a fault before the move to the trash leaves the tenant
/// served and whole; a fault after it leaves it deleted; neither loses anything acknowledged nor
/// leaves a tenant half there.
@Suite("Tenant deletion")
struct DeletionTests {
    @Test(arguments: [
        (FaultyFileSystem.Operation.syncDirectory, 0, false), (.rename, 0, false), (.syncDirectory, 1, true),
        (.syncDirectory, 2, true),
    ])
    func aFaultAtAnyStepOfADeletion(operation: FaultyFileSystem.Operation, skip: Int, movedFirst: Bool) async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let registry = try await CreationTests.registry(dir.path, disk: disk)
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            let id = created.metadata.tenantID
            let tenant = try await registry.tenant(id: id)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            for index in 1...5 { _ = try await tenant.postAndCommit(alice, room: "general", text: "m\(index)") }
            // The catalog's background write is done, so the fault meets the deletion's own step.
            await registry.flushCatalog()
            disk.fail(operation, after: skip, errno: EIO)
            await #expect(throws: TenantError.self) { try await registry.deleteTenant(id: id) }
            #expect(disk.calls(operation) > skip, "the fault was never reached")
            disk.clearFaults()
            if movedFirst {
                // Moved out of its place: deleted, and a restart does not bring it back.
                #expect(await registry.tenantCount == 0)
                await #expect(throws: TenantError.self) { _ = try await registry.tenant(id: id) }
            } else {
                // Still in place: served again, everything acknowledged there.
                let again = try await registry.tenant(id: id)
                let history = try await again.history(alice, room: "general", after: 0, before: nil, limit: 10)
                #expect(history.map(\.text) == (1...5).map { "m\($0)" })
            }
            await registry.shutdown()
            let restarted = try await CreationTests.registry(dir.path, disk: FaultyFileSystem())
            #expect(await restarted.tenantCount == (movedFirst ? 0 : 1))
            await restarted.shutdown()
        }
    }
}
