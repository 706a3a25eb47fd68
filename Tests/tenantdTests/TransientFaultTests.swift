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

/// A shortage that passes (EMFILE, ENFILE, ENOMEM when a log opens its next segment) fails the
/// writes it holds back, never the log or the tenant: the log retries by itself.
@Suite("Transient faults")
struct TransientFaultTests {
    static func payload(_ index: Int) -> [UInt8] { Array("record \(index)".utf8) }

    @Test(arguments: [EMFILE, ENFILE, ENOMEM])
    func aShortageWhenOpeningASegmentFailsOneWriteAndTheLogGoesOn(code: Int32) async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let configuration = WALConfiguration(fsync: .always, segmentSize: 512)
            let writer = try WALWriter(directory: dir.path, lastLSN: 0, configuration: configuration, fileSystem: disk)
            for index in 0..<10 {
                try await writer.waitUntilDurable(try writer.append(type: 1, payload: Self.payload(index)))
            }
            let segments = disk.calls(.createSegment)
            disk.fail(.createSegment, errno: code)
            var heldBack: WALError?
            var index = 10
            while heldBack == nil && index < 200 {
                let lsn = try writer.append(type: 1, payload: Self.payload(index))
                index += 1
                do {
                    try await writer.waitUntilDurable(lsn)
                } catch let error as WALError {
                    heldBack = error
                }
            }
            let error = try #require(heldBack, "the fault was never hit")
            #expect(error.isTransient)
            #expect(disk.calls(.createSegment) > segments)
            #expect(writer.failure == nil, "a shortage does not fail the log")
            // The next write goes through, and the one held back lands before it, in order.
            let next = try writer.append(type: 1, payload: Self.payload(index))
            try await writer.waitUntilDurable(next)
            try await writer.close()
            #expect(try FaultTests.readAll(dir.path) == (0...index).map(Self.payload))
        }
    }

    @Test(arguments: [(FaultyFileSystem.Operation.write, ENOMEM), (.sync, ENOMEM), (.write, EMFILE)])
    func aWriteOrSyncFailureIsNeverTakenForAShortage(operation: FaultyFileSystem.Operation, code: Int32) async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let writer = try WALWriter(
                directory: dir.path,
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .always),
                fileSystem: disk
            )
            try await writer.waitUntilDurable(try writer.append(type: 1, payload: Self.payload(0)))
            disk.fail(operation, errno: code)
            let lsn = try writer.append(type: 1, payload: Self.payload(1))
            await #expect(throws: WALError.self) { try await writer.waitUntilDurable(lsn) }
            // The log failed: a write that may have partly landed is never retried.
            let failure = try #require(writer.failure)
            #expect(!failure.isTransient)
            #expect(throws: WALError.self) { _ = try writer.append(type: 1, payload: Self.payload(2)) }
        }
    }

    @Test func aLongShortageBoundsWhatTheLogQueues() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let configuration = WALConfiguration(fsync: .always, segmentSize: 4096)
            let writer = try WALWriter(directory: dir.path, lastLSN: 0, configuration: configuration, fileSystem: disk)
            try await writer.waitUntilDurable(try writer.append(type: 1, payload: Self.payload(0)))
            disk.fail(.createSegment, errno: EMFILE, times: .max)
            // Fresh random bytes do not compress: each record takes its size in the queue.
            var generator = SystemRandomNumberGenerator()
            let size = 2048
            var appended = 0
            var refused: WALError?
            while refused == nil && appended < 20_000 {
                let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
                do {
                    let lsn = try writer.append(type: 1, payload: payload)
                    appended += 1
                    if appended % 64 == 0 { try? await writer.waitUntilDurable(lsn) }
                } catch let error as WALError {
                    refused = error
                }
            }
            let error = try #require(refused, "appends were never refused during the shortage")
            #expect(error.isTransient)
            #expect(appended * size < 2 * WALLimits.maxHeldBackBytes, "\(appended) records queued")
            #expect(writer.failure == nil)
            // The shortage passes: everything queued lands, in order, and appends go on.
            disk.clearFaults()
            let next = try await Self.appendWhenAccepted(writer, payload: Self.payload(99))
            try await writer.waitUntilDurable(next)
            try await writer.close()
            let records = try FaultTests.readAll(dir.path)
            #expect(records.count == appended + 2)
            #expect(records.last == Self.payload(99))
        }
    }

    /// Appends once the writer takes appends again (its retry has drained the queue).
    static func appendWhenAccepted(_ writer: WALWriter, payload: [UInt8]) async throws -> UInt64 {
        var lsn: UInt64 = 0
        try await waitUntilAsync("the writer to take appends again") {
            guard let accepted = try? writer.append(type: 1, payload: payload) else { return false }
            lsn = accepted
            return true
        }
        return lsn
    }

    @Test func aTenantKeepsServingThroughAShortageAndItsUsersSeeNoServerPath() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let registry = try await EngineFixtures.registry(dir.path) {
                $0.fileSystem = disk
                $0.segmentSize = 1024
            }
            let created = try await registry.createTenant(name: "A", subdomain: "acme", plan: nil, owner: "alice")
            let tenant = try await registry.tenant(id: created.metadata.tenantID)
            let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
            disk.fail(.createSegment, errno: EMFILE)
            var refused: TenantError?
            var posted = 0
            while refused == nil && posted < 300 {
                do {
                    _ = try await tenant.postAndCommit(
                        alice,
                        room: "general",
                        text: "message \(posted) padding padding"
                    )
                } catch let error as TenantError {
                    refused = error
                }
                posted += 1
            }
            let error = try #require(refused, "the fault was never hit")
            #expect(error.kind == .storageFailed)
            #expect(!error.message.contains(dir.path) && !error.message.contains("/wal"), "\(error.message)")
            #expect(error.message.contains("retry"))
            // Not read-only: the next request is served, and the held-back message lands too.
            let seq = try await tenant.postAndCommit(alice, room: "general", text: "after the shortage")
            #expect(seq == UInt64(posted + 1))
            let history = try await tenant.history(alice, room: "general", after: 0, before: nil, limit: 1000)
            #expect(history.map(\.seq) == (1...UInt64(posted + 1)).map { $0 })
            await registry.shutdown()
        }
    }
}
