import EngineTestSupport
import Foundation
import Logging
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// Issue 25, finding 3: a symbolic link planted in a tenant directory never lets a tree walk
/// reach another tenant's files. Removal unlinks links without following them, copies refuse
/// them, and a directory that holds one is never opened.
@Suite("Links in tenant directories")
struct LinkSafetyTests {
    /// A victim's directory with a file, and an attacker's directory holding `notes`, a link to
    /// the victim's `wal` directory, and `peek`, a link to the victim's file.
    static func plant(in dir: TemporaryDirectory) throws -> (victim: String, attacker: String, file: String) {
        let victim = dir.path + "/tenant_victim"
        let attacker = dir.path + "/tenant_attacker"
        try FileManager.default.createDirectory(atPath: victim + "/wal", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: attacker + "/wal", withIntermediateDirectories: true)
        let file = victim + "/wal/00000000000000000001.wal"
        try Data("the victim's log".utf8).write(to: URL(fileURLWithPath: file))
        try FileManager.default.createSymbolicLink(atPath: attacker + "/notes", withDestinationPath: victim + "/wal")
        try FileManager.default.createSymbolicLink(atPath: attacker + "/wal/peek", withDestinationPath: file)
        return (victim, attacker, file)
    }

    @Test func removingATreeUnlinksLinksAndLeavesTheirTargets() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (victim, attacker, file) = try Self.plant(in: dir)
        try POSIXFileSystem().removeTree(attacker)
        #expect(!FileManager.default.fileExists(atPath: attacker))
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "the victim's log")
        #expect(try FileManager.default.contentsOfDirectory(atPath: victim + "/wal") == ["00000000000000000001.wal"])
    }

    @Test func copyingATreeRefusesALinkAndCopiesNothingOfItsTarget() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (_, attacker, file) = try Self.plant(in: dir)
        #expect(throws: WALError.self) { try POSIXFileSystem().copyTree(attacker, to: dir.path + "/copy") }
        let copied = FileManager.default.enumerator(atPath: dir.path + "/copy")?.allObjects as? [String] ?? []
        #expect(!copied.contains { $0.hasSuffix(".wal") || $0 == "notes" })
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "the victim's log")
    }

    @Test func aLinkIsFoundAnywhereInTheTreeAndPlainTreesHaveNone() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (victim, attacker, _) = try Self.plant(in: dir)
        let found = try POSIXFileSystem().foreignFile(under: attacker)
        #expect(found == attacker + "/notes" || found == attacker + "/wal/peek")
        #expect(try POSIXFileSystem().foreignFile(under: victim) == nil)
        // The tenant directory itself a link to another.
        try FileManager.default.createSymbolicLink(atPath: dir.path + "/tenant_alias", withDestinationPath: victim)
        #expect(try POSIXFileSystem().foreignFile(under: dir.path + "/tenant_alias") == dir.path + "/tenant_alias")
        #expect(try POSIXFileSystem().treeSize(dir.path + "/tenant_alias") == 0)
    }

    @Test func aFileIsNeverOpenedThroughALink() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (_, attacker, _) = try Self.plant(in: dir)
        #expect(throws: WALError.self) { _ = try POSIXFileSystem().openForReading(attacker + "/wal/peek") }
    }

    @Test func aMigrationListingRefusesALink() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (_, attacker, _) = try Self.plant(in: dir)
        #expect(throws: TenantError.self) { _ = try MigrationFiles.list(attacker, fileSystem: POSIXFileSystem()) }
    }

    @Test func aTenantDirectoryHoldingALinkIsNeitherVerifiedNorOpened() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (_, attacker, _) = try Self.plant(in: dir)
        let verification = TenantVerifier.verify(path: attacker)
        #expect(verification.problem?.contains("symbolic link") == true)
        // A real tenant's directory, whole, opens; with a link planted in it, it does not.
        let configuration = EngineFixtures.configuration(dir.path + "/data", fsync: .no, defaultPlan: nil)
        let registry = try await EngineFixtures.registry(configuration)
        let id = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "o").metadata.tenantID
        await registry.shutdown()
        let path = dir.path + "/data/tenant_" + id
        await (try await Tenant.open(path: path, configuration: configuration, logger: Logger.quiet)).close()
        try FileManager.default.createSymbolicLink(atPath: path + "/notes", withDestinationPath: attacker)
        await #expect {
            _ = try await Tenant.open(path: path, configuration: configuration, logger: Logger.quiet)
        } throws: { error in
            "\(error)".contains("symbolic link")
        }
    }
}
