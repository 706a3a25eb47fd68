import EngineTestSupport
import Foundation
import Logging
import TenantEngine
import TestSupport
import Testing
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// Disk faults and power cuts through an injectable file layer, not a real failing disk.
@Suite("Disk faults and power loss")
struct FaultTests {
    static func payload(_ index: Int) -> [UInt8] { Array("record \(index)".utf8) }

    /// A registry over `disk` (fsync always, enterprise plan) with the tenant `acme` owned by alice.
    static func registryOverFaultyDisk(
        _ path: String,
        disk: FaultyFileSystem
    ) async throws -> (TenantRegistry, CreatedTenant, EngineConfiguration) {
        let configuration = EngineFixtures.configuration(path) { $0.fileSystem = disk }
        let registry = try await EngineFixtures.registry(configuration)
        let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
        return (registry, created, configuration)
    }

    static func readAll(_ directory: String) throws -> [[UInt8]] {
        var records: [[UInt8]] = []
        _ = try WALReader(directory: directory).replay(repair: true) { _, _, payload in records.append(Array(payload)) }
        return records
    }

    @Test(arguments: [
        (FaultyFileSystem.Operation.write, ENOSPC), (.sync, EIO), (.write, EIO), (.createSegment, ENOSPC),
    ])
    func aFailedWriteOrSyncIsNeverAcknowledged(operation: FaultyFileSystem.Operation, code: Int32) async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let configuration = WALConfiguration(fsync: .always, segmentSize: 512)
            let writer = try WALWriter(directory: dir.path, lastLSN: 0, configuration: configuration, fileSystem: disk)
            var acknowledged = 0
            for index in 0..<20 {
                let lsn = try writer.append(type: 1, payload: Self.payload(index))
                try await writer.waitUntilDurable(lsn)
                acknowledged += 1
            }
            disk.fail(operation, errno: code)
            // Keep writing until the fault is hit (a segment creation comes only with the next roll).
            var failedAt: UInt64?
            for index in 20..<200 where failedAt == nil {
                let lsn: UInt64
                do {
                    lsn = try writer.append(type: 1, payload: Self.payload(index))
                } catch {
                    failedAt = UInt64(index + 1)
                    break
                }
                do {
                    try await writer.waitUntilDurable(lsn)
                    acknowledged += 1
                } catch let error as WALError {
                    #expect(
                        error.description.contains(POSIXFile.errorString(code)) || error.description.contains("failed")
                    )
                    failedAt = lsn
                }
            }
            let failed = try #require(failedAt, "the fault was never hit")
            #expect(writer.durableLSN < failed)
            #expect(writer.durableLSN == UInt64(acknowledged))
            // Read-only from now on, and a failed sync is never retried.
            let syncs = disk.calls(.sync)
            #expect(throws: WALError.self) { _ = try writer.append(type: 1, payload: [1]) }
            await #expect(throws: WALError.self) { try await writer.flush() }
            #expect(disk.calls(.sync) == syncs)
            // The fault clears; reopening (as a restart does) finds every acknowledged record.
            disk.clearFaults()
            let records = try Self.readAll(dir.path)
            #expect(records.count >= acknowledged)
            #expect(Array(records.prefix(acknowledged)) == (0..<acknowledged).map(Self.payload))
            let reopened = try WALWriter(
                directory: dir.path,
                lastLSN: UInt64(records.count),
                configuration: configuration,
                fileSystem: disk
            )
            let next = try reopened.append(type: 1, payload: Self.payload(999))
            try await reopened.waitUntilDurable(next)
            try await reopened.close()
            #expect(try Self.readAll(dir.path).last == Self.payload(999))
        }
    }

    /// A tree another remover is taking down at the same time: a step that finds its path gone
    /// (ENOENT) is not an error, since the goal, nothing left, holds; any other failure still is.
    /// (The injected ENOENT leaves the directory in place; a real one means it is gone.)
    @Test func removingATreeSomeoneElseIsRemovingIsNotAnError() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let tree = dir.path + "/tenant_x"
            _ = try disk.makeDirectory(tree)
            disk.fail(.removeDirectory, errno: ENOENT)
            try disk.removeTree(tree)
            disk.fail(.removeDirectory, errno: EIO)
            #expect(throws: WALError.self) { try disk.removeTree(tree) }
            try disk.removeTree(tree)
            #expect(!FileManager.default.fileExists(atPath: tree))
        }
    }

    @Test func powerLossUnderAlwaysLosesNothingAcknowledged() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let configuration = WALConfiguration(fsync: .always, segmentSize: 4096)
            let writer = try WALWriter(directory: dir.path, lastLSN: 0, configuration: configuration, fileSystem: disk)
            let acknowledged = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<600 {
                    let lsn = try writer.append(type: 1, payload: Self.payload(index))
                    group.addTask {
                        try await writer.waitUntilDurable(lsn)
                        return index
                    }
                }
                return try await group.reduce(into: Set<Int>()) { $0.insert($1) }
            }
            // Appended but never waited for: may be lost.
            for index in 600..<650 { _ = try writer.append(type: 1, payload: Self.payload(index)) }
            try disk.simulatePowerLoss()
            let records = try Self.readAll(dir.path)
            #expect(records.count >= acknowledged.count)
            #expect(records.prefix(600) == ArraySlice((0..<600).map(Self.payload)))
        }
    }

    @Test func powerLossUnderEverysecLosesAtMostTheLastSecond() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let scheduler = WALSyncScheduler(interval: .milliseconds(200))
            let configuration = WALConfiguration(fsync: .everysec)
            let writer = try WALWriter(
                directory: dir.path,
                lastLSN: 0,
                configuration: configuration,
                syncScheduler: scheduler,
                fileSystem: disk
            )
            // Acknowledged, then the once-a-second sync (here every 200 ms) runs: these must survive.
            var index = 0
            for _ in 0..<300 {
                let lsn = try writer.append(type: 1, payload: Self.payload(index))
                try await writer.waitUntilDurable(lsn)
                index += 1
            }
            // Wait for a tick that covers every byte written so far (one may already have run
            // after the last append, so a count of syncs is no sign: the bytes still unsynced are).
            let deadline = ContinuousClock.now + .seconds(30)
            while disk.unsyncedBytes > 0 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(disk.unsyncedBytes == 0, "the periodic sync never covered the acknowledged records")
            let synced = index
            // Acknowledged after write(2) only, within the last interval: these may be lost.
            for _ in 0..<300 {
                let lsn = try writer.append(type: 1, payload: Self.payload(index))
                try await writer.waitUntilDurable(lsn)
                index += 1
            }
            try disk.simulatePowerLoss()
            let records = try Self.readAll(dir.path)
            #expect(records == (0..<records.count).map(Self.payload))
            #expect(records.count >= synced, "kept \(records.count), \(synced) were synced")
            #expect(records.count <= index)
        }
    }

    /// `count` everysec logs under `root` on `disk`, each with `records` acknowledged records.
    static func dirtyLogs(
        _ count: Int,
        records: Int,
        under root: String,
        disk: FaultyFileSystem,
        scheduler: WALSyncScheduler
    ) async throws -> [WALWriter] {
        var writers: [WALWriter] = []
        for log in 0..<count {
            let writer = try WALWriter(
                directory: root + "/log\(log)",
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .everysec),
                syncScheduler: scheduler,
                fileSystem: disk
            )
            for index in 0..<records {
                try await writer.waitUntilDurable(try writer.append(type: 1, payload: Self.payload(index)))
            }
            writers.append(writer)
        }
        return writers
    }

    @Test func manyDirtyLogsAreSyncedWithOneSyncOfTheFileSystem() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let scheduler = WALSyncScheduler(interval: .seconds(3600))
            let count = WALLimits.fileSystemSyncThreshold * 2 + 1
            _ = try await Self.dirtyLogs(count, records: 5, under: dir.path, disk: disk, scheduler: scheduler)
            let syncsBefore = disk.calls(.sync)
            scheduler.tick()
            #expect(disk.calls(.sync) == syncsBefore + 1, "one syncfs for \(count) logs, on the timer's thread")
            try disk.simulatePowerLoss()
            for log in 0..<count {
                #expect(try Self.readAll(dir.path + "/log\(log)") == (0..<5).map(Self.payload), "log \(log)")
            }
        }
    }

    @Test func aFewDirtyLogsAreSyncedEachOnItsOwn() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let scheduler = WALSyncScheduler(interval: .seconds(3600))
            let count = 3
            _ = try await Self.dirtyLogs(count, records: 5, under: dir.path, disk: disk, scheduler: scheduler)
            let syncsBefore = disk.completedSyncs
            scheduler.tick()
            // Counted once each sync returned, not as it starts: the power cut comes after.
            try await waitUntilAsync("each log synced") { disk.completedSyncs == syncsBefore + count }
            try disk.simulatePowerLoss()
            for log in 0..<count { #expect(try Self.readAll(dir.path + "/log\(log)").count == 5) }
        }
    }

    @Test func aFailedSyncOfTheFileSystemFallsBackToEachLogsOwnSync() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let scheduler = WALSyncScheduler(interval: .seconds(3600))
            let count = WALLimits.fileSystemSyncThreshold + 4
            let writers = try await Self.dirtyLogs(count, records: 2, under: dir.path, disk: disk, scheduler: scheduler)
            // The syncfs fails (another program's file, say): no log is failed for it; each
            // syncs on its own, and those succeed.
            disk.fail(.sync, errno: EIO)
            let syncsBefore = disk.calls(.sync)
            scheduler.tick()
            try await waitUntilAsync("each log synced") { disk.calls(.sync) == syncsBefore + 1 + count }
            #expect(writers.allSatisfy { $0.failure == nil })
            try disk.simulatePowerLoss()
            for log in 0..<count { #expect(try Self.readAll(dir.path + "/log\(log)").count == 2) }
        }
    }

    @Test func whenEveryLogsOwnSyncFailsEveryLogFails() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let scheduler = WALSyncScheduler(interval: .seconds(3600))
            let count = WALLimits.fileSystemSyncThreshold + 4
            let writers = try await Self.dirtyLogs(count, records: 2, under: dir.path, disk: disk, scheduler: scheduler)
            disk.fail(.sync, errno: EIO, times: Int.max)
            scheduler.tick()
            try await waitUntilAsync("every log failed") { writers.allSatisfy { $0.failure != nil } }
            for writer in writers {
                #expect(throws: WALError.self) { _ = try writer.append(type: 1, payload: Self.payload(9)) }
            }
        }
    }

    @Test func aTenantTurnsReadOnlyOnADiskFaultAndComesBackWithEverythingAcknowledged() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let (registry, created, _) = try await Self.registryOverFaultyDisk(dir.path, disk: disk)
            let other = try await registry.createTenant(name: "B", subdomain: "other", plan: .enterprise, owner: "bob")
            let id = created.metadata.tenantID
            var tenant = try await registry.tenant(id: id)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            for index in 1...10 { _ = try await tenant.postAndCommit(alice, room: "r", text: "m\(index)") }
            disk.fail(.sync, errno: EIO)
            await #expect(throws: TenantError.self) {
                _ = try await tenant.postAndCommit(alice, room: "r", text: "lost?")
            }
            // Read-only: writes answer IOERR, reads go on.
            do {
                _ = try await tenant.postAndCommit(alice, room: "r", text: "x")
                Issue.record("a write was accepted after a disk fault")
            } catch let error as TenantError {
                #expect(error.kind == .storageFailed)
            }
            do {
                _ = try await tenant.addUser(alice, name: "carol", role: .member)
                Issue.record("a user was added after a disk fault")
            } catch let error as TenantError {
                #expect(error.kind == .storageFailed)
            }
            #expect(try await tenant.history(alice, room: "r", after: nil, before: nil, limit: 100).count == 10)
            // Other tenants write on.
            let otherTenant = try await registry.tenant(id: other.metadata.tenantID)
            let bob = try await otherTenant.authenticate(user: "bob", token: other.ownerToken)
            #expect(try await otherTenant.postAndCommit(bob, room: "r", text: "fine") == 1)
            // The fault clears; the operator reopens the tenant.
            disk.clearFaults()
            try await registry.reopenTenant(id: id)
            tenant = try await registry.tenant(id: id)
            let alice2 = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            let texts = try await tenant.history(alice2, room: "r", after: 0, before: nil, limit: 100).map(\.text)
            #expect(Array(texts.prefix(10)) == (1...10).map { "m\($0)" })
            let seq = try await tenant.postAndCommit(alice2, room: "r", text: "back")
            #expect(seq == UInt64(texts.count + 1))
            await registry.shutdown()
        }
    }

    /// A fault at any step of a checkpoint (writing, syncing or renaming its file, syncing its
    /// directory) leaves the tenant serving and the log whole; a later checkpoint succeeds.
    @Test(arguments: [FaultyFileSystem.Operation.write, .sync, .rename, .syncDirectory])
    func aFaultDuringACheckpointLosesNothing(operation: FaultyFileSystem.Operation) async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let (registry, created, configuration) = try await Self.registryOverFaultyDisk(dir.path, disk: disk)
            let id = created.metadata.tenantID
            let tenant = try await registry.tenant(id: id)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            for index in 1...20 { _ = try await tenant.postAndCommit(alice, room: "r", text: "m\(index)") }
            disk.fail(operation, errno: ENOSPC)
            await #expect(throws: (any Error).self) { try await tenant.checkpoint() }
            // Still serving, nothing lost, no covered segment dropped without a checkpoint.
            #expect(try await tenant.postAndCommit(alice, room: "r", text: "after the fault") == 21)
            let walFiles = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/tenant_\(id)/wal")
            let checkpoints =
                (try? FileManager.default.contentsOfDirectory(atPath: dir.path + "/tenant_\(id)/checkpoint")) ?? []
            #expect(!walFiles.isEmpty || checkpoints.contains { $0.hasSuffix(".ckpt") })
            #expect(!checkpoints.contains { $0.hasSuffix(".tmp") } || operation == .syncDirectory)
            let reopened = try await Tenant.open(
                path: dir.path + "/tenant_\(id)",
                configuration: {
                    var c = configuration
                    c.fileSystem = POSIXFileSystem()
                    return c
                }(),
                logger: Logger.quiet
            )
            #expect(try await reopened.history(.operator, room: "r", after: 0, before: nil, limit: 100).count == 21)
            await reopened.close(checkpoint: false)
            // The fault clears; the next checkpoint goes through.
            try await tenant.checkpoint()
            #expect(
                try FileManager.default.contentsOfDirectory(atPath: dir.path + "/tenant_\(id)/checkpoint").filter {
                    $0.hasSuffix(".ckpt")
                }.count == 1
            )
            await registry.shutdown()
        }
    }
}
