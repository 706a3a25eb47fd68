import Foundation
import Synchronization
import TestSupport
import Testing
import WAL

@Suite("WAL")
struct WALTests {
    struct Record: Equatable {
        var lsn: UInt64
        var type: UInt8
        var payload: [UInt8]
    }

    static func payload(_ index: Int) -> [UInt8] {
        Array("message \(index): the quick brown fox jumps over the lazy dog \(index % 13)".utf8)
    }

    /// Writes `count` records through the group-commit path, `concurrency` waiters at a time.
    static func writeRecords(
        _ directory: String,
        count: Int,
        from start: Int = 0,
        lastLSN: UInt64 = 0,
        configuration: WALConfiguration = WALConfiguration(fsync: .always)
    ) async throws {
        let writer = try WALWriter(directory: directory, lastLSN: lastLSN, configuration: configuration)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in start..<(start + count) {
                let lsn = try writer.append(type: UInt8(index % 5), payload: payload(index))
                group.addTask { try await writer.waitUntilDurable(lsn) }
            }
            try await group.waitForAll()
        }
        try await writer.close()
    }

    static func readAll(_ directory: String, repair: Bool = true) throws -> ([Record], WALRecoveryResult) {
        var records: [Record] = []
        let result = try WALReader(directory: directory).replay(repair: repair) { lsn, type, payload in
            records.append(Record(lsn: lsn, type: type, payload: Array(payload)))
        }
        return (records, result)
    }

    static func segmentPaths(_ directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".wal") }.sorted()
            .map { directory + "/" + $0 }
    }

    @Test func crc32cKnownValues() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        for value: UInt32 in [0, 1, 0xDEAD_BEEF, .max] { #expect(CRC32C.unmask(CRC32C.mask(value)) == value) }
        #expect(CRC32C.mask(0) != 0)
        // Hardware and tables agree, at every length and alignment.
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<4099).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bytes.withUnsafeBytes { raw in
            for start in 0..<9 {
                for length in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4090 - start] {
                    let slice = UnsafeRawBufferPointer(rebasing: raw[start..<(start + length)])
                    #expect(CRC32C.checksum(slice) == CRC32C.softwareChecksum(slice))
                    #expect(
                        CRC32C.checksum(slice, continuing: 0x1234) == CRC32C.softwareChecksum(slice, continuing: 0x1234)
                    )
                }
            }
        }
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32C.softwareChecksum($0) } == 0xE306_9283)
    }

    @Test func roundTripWithGroupCommitAndSegmentRolls() async throws {
        try await TemporaryDirectory.with { dir in
            let wal = dir.path + "/wal"
            let configuration = WALConfiguration(fsync: .always, segmentSize: 4096)
            try await Self.writeRecords(wal, count: 1500, configuration: configuration)
            let (records, result) = try Self.readAll(wal)
            #expect(records.count == 1500)
            #expect(result.lastLSN == 1500)
            #expect(result.tornTail == nil)
            #expect(result.segments.count > 3)
            for (index, record) in records.enumerated() {
                #expect(record == Record(lsn: UInt64(index + 1), type: UInt8(index % 5), payload: Self.payload(index)))
            }
            // Appending after a restart continues the lsn sequence in a new segment.
            try await Self.writeRecords(
                wal,
                count: 10,
                from: 1500,
                lastLSN: result.lastLSN,
                configuration: configuration
            )
            let (again, _) = try Self.readAll(wal)
            #expect(again.count == 1510)
            #expect(again.last?.lsn == 1510)
            #expect(again.last?.payload == Self.payload(1509))
        }
    }

    @Test(arguments: [FsyncPolicy.always, .everysec, .no])
    func everyPolicyIsReadableAfterClose(policy: FsyncPolicy) async throws {
        try await TemporaryDirectory.with { dir in
            try await Self.writeRecords(dir.path, count: 200, configuration: WALConfiguration(fsync: policy))
            #expect(try Self.readAll(dir.path).0.count == 200)
        }
    }

    @Test func refusesRecordOverTheBound() async throws {
        try await TemporaryDirectory.with { dir in
            let writer = try WALWriter(
                directory: dir.path,
                lastLSN: 0,
                configuration: WALConfiguration(maxRecordSize: 1024)
            )
            #expect(throws: WALError.recordTooLarge(1025, limit: 1024)) {
                _ = try writer.append(type: 1, payload: [UInt8](repeating: 7, count: 1025))
            }
            let lsn = try writer.append(type: 1, payload: [UInt8](repeating: 7, count: 1024))
            try await writer.waitUntilDurable(lsn)
            try await writer.close()
        }
    }

    /// A log (crafted, or very old) at the format's last lsn: the next append is refused, never
    /// written, so the log still reads back whole (the reader refuses a record at that lsn).
    @Test func aLogAtTheLastLSNRefusesTheNextAppendAndStillReads() async throws {
        try await TemporaryDirectory.with { dir in
            let writer = try WALWriter(
                directory: dir.path,
                lastLSN: WALFormat.maxLSN - 2,
                configuration: WALConfiguration(fsync: .always)
            )
            let lsn = try writer.append(type: 1, payload: [1, 2, 3])
            #expect(lsn == WALFormat.maxLSN - 1)
            try await writer.waitUntilDurable(lsn)
            #expect(throws: WALError.failed("the log has reached its last lsn")) {
                _ = try writer.append(type: 1, payload: [4, 5, 6])
            }
            #expect(writer.durableLSN == lsn && writer.lastAppendedLSN == lsn)
            try await writer.close()
            var read: [UInt64] = []
            // A checkpoint at the writer's start covers what came before.
            let result = try WALReader(directory: dir.path).replayRecords(repair: false, after: WALFormat.maxLSN - 2) {
                read.append($0.lsn)
            }
            #expect(read == [WALFormat.maxLSN - 1])
            #expect(result.lastLSN == WALFormat.maxLSN - 1)
        }
    }

    @Test func tornTailAtEveryOffsetOfTheLastRecord() async throws {
        try await TemporaryDirectory.with { dir in
            let original = dir.path + "/original"
            try await Self.writeRecords(original, count: 20)
            let segment = try Self.segmentPaths(original)[0]
            let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: segment)))
            // Where the last record starts: the end of the 19-record prefix.
            let prefixDirectory = dir.path + "/prefix"
            try await Self.writeRecords(prefixDirectory, count: 19)
            let lastStart = try Data(contentsOf: URL(fileURLWithPath: Self.segmentPaths(prefixDirectory)[0])).count
            #expect(lastStart < bytes.count)
            for cut in lastStart..<bytes.count {
                let trial = dir.path + "/trial-\(cut)"
                try FileManager.default.createDirectory(atPath: trial, withIntermediateDirectories: true)
                let path = trial + "/" + (segment as NSString).lastPathComponent
                try Data(bytes[0..<cut]).write(to: URL(fileURLWithPath: path))
                let (records, result) = try Self.readAll(trial)
                #expect(records.count == 19, "cut at \(cut)")
                #expect(records.last?.payload == Self.payload(18))
                if cut > lastStart {
                    #expect(result.tornTail?.offset == lastStart)
                    #expect(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int == lastStart)
                    let aside = try #require(result.tornTail?.movedTo)
                    #expect(try Data(contentsOf: URL(fileURLWithPath: aside)) == Data(bytes[lastStart..<cut]))
                } else {
                    #expect(result.tornTail == nil)
                }
                // The repaired log takes appends again and reads back whole.
                try await Self.writeRecords(trial, count: 1, from: 19, lastLSN: result.lastLSN)
                let (after, again) = try Self.readAll(trial)
                #expect(after.count == 20)
                #expect(after.last?.payload == Self.payload(19))
                #expect(again.tornTail == nil)
                try FileManager.default.removeItem(atPath: trial)
            }
        }
    }

    @Test func zeroedTailIsTorn() async throws {
        try await TemporaryDirectory.with { dir in
            try await Self.writeRecords(dir.path, count: 10)
            let segment = try Self.segmentPaths(dir.path)[0]
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: segment))
            try handle.seekToEnd()
            try handle.write(contentsOf: Data(count: 4096))
            try handle.close()
            let (records, result) = try Self.readAll(dir.path)
            #expect(records.count == 10)
            #expect(result.tornTail?.droppedBytes == 4096)
        }
    }

    @Test func zeroedSectorInsideTheLastRecordIsTorn() async throws {
        try await TemporaryDirectory.with { dir in
            try await Self.writeRecords(dir.path, count: 1)
            try await Self.writeRecords(dir.path, count: 1, from: 1, lastLSN: 1)
            // The second segment holds one record; zero its payload bytes.
            let segment = try Self.segmentPaths(dir.path)[1]
            var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: segment)))
            for index in (WALFormat.segmentHeaderSize + WALFormat.recordHeaderSize)..<bytes.count { bytes[index] = 0 }
            try Data(bytes).write(to: URL(fileURLWithPath: segment))
            let (records, result) = try Self.readAll(dir.path)
            #expect(records.count == 1)
            #expect(result.tornTail != nil)
        }
    }

    /// A flipped bit anywhere is never served: it is a corruption error, or (inside the last
    /// record) a torn tail that drops that record; no record ever comes back altered.
    @Test func flippedBitIsAlwaysDetected() async throws {
        try await TemporaryDirectory.with { dir in
            let original = dir.path + "/original"
            try await Self.writeRecords(original, count: 12)
            let segment = try Self.segmentPaths(original)[0]
            let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: segment)))
            let (expected, _) = try Self.readAll(original, repair: false)
            let trial = dir.path + "/trial"
            try FileManager.default.createDirectory(atPath: trial, withIntermediateDirectories: true)
            let path = trial + "/" + (segment as NSString).lastPathComponent
            var corruptions = 0
            var tornTails = 0
            for index in 0..<bytes.count {
                var damaged = bytes
                damaged[index] ^= UInt8(1 << (index % 8))
                try Data(damaged).write(to: URL(fileURLWithPath: path))
                do {
                    let (records, result) = try Self.readAll(trial, repair: false)
                    #expect(records.count < expected.count, "flip at \(index) went unnoticed")
                    #expect(Array(expected.prefix(records.count)) == records, "flip at \(index) altered a record")
                    #expect(result.tornTail != nil)
                    tornTails += 1
                } catch let error as WALError {
                    #expect(error.isCorruption, "flip at \(index): \(error)")
                    corruptions += 1
                }
                // Verification never changes the file.
                #expect(try Array(Data(contentsOf: URL(fileURLWithPath: path))) == damaged)
            }
            #expect(corruptions > 0)
            #expect(tornTails > 0)
        }
    }

    @Test func damageBeforeTheLastSegmentIsCorruptionWithFileAndOffset() async throws {
        try await TemporaryDirectory.with { dir in
            try await Self.writeRecords(dir.path, count: 5)
            try await Self.writeRecords(dir.path, count: 5, from: 5, lastLSN: 5)
            let first = try Self.segmentPaths(dir.path)[0]
            var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: first)))
            let before = bytes
            bytes[bytes.count - 3] ^= 0x40
            try Data(bytes).write(to: URL(fileURLWithPath: first))
            do {
                _ = try Self.readAll(dir.path)
                Issue.record("damage went unnoticed")
            } catch let error as WALError {
                #expect(error.isCorruption)
                #expect(error.corruptionLocation?.file == first)
                #expect(error.description.contains(first))
            }
            // Nothing was cut or moved.
            #expect(try Array(Data(contentsOf: URL(fileURLWithPath: first))).count == before.count)
        }
    }

    @Test func missingSegmentIsCorruption() async throws {
        try await TemporaryDirectory.with { dir in
            for round in 0..<3 {
                try await Self.writeRecords(dir.path, count: 3, from: round * 3, lastLSN: UInt64(round * 3))
            }
            try FileManager.default.removeItem(atPath: try Self.segmentPaths(dir.path)[1])
            #expect(throws: WALError.self) { try Self.readAll(dir.path) }
        }
    }

    /// A real fault, no injection: the log directory vanishes under the writer.
    @Test func aVanishedDirectoryFailsTheAppendAndNothingIsAcknowledged() async throws {
        try await TemporaryDirectory.with { dir in
            let writer = try WALWriter(
                directory: dir.path + "/gone/wal",
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .always)
            )
            try FileManager.default.removeItem(atPath: dir.path + "/gone")
            let lsn = try writer.append(type: 1, payload: [4, 5, 6])
            await #expect(throws: WALError.self) { try await writer.waitUntilDurable(lsn) }
            #expect(writer.durableLSN == 0)
            #expect(throws: WALError.self) { _ = try writer.append(type: 1, payload: [7]) }
        }
    }

    /// A crash during a segment roll leaves a new last segment with no header, a partial one, or
    /// only its header: recovery keeps every record and the log goes on.
    @Test(arguments: [0, 7, 19, 20])
    func aCrashDuringASegmentRollRecovers(headerBytes: Int) async throws {
        try await TemporaryDirectory.with { dir in
            try await Self.writeRecords(
                dir.path,
                count: 30,
                configuration: WALConfiguration(fsync: .always, segmentSize: 300)
            )
            let (records, result) = try Self.readAll(dir.path)
            let next = result.lastLSN + 1
            let header = WALFormat.segmentHeader(firstLSN: next)
            let path = dir.path + "/" + WALFormat.segmentName(firstLSN: next)
            try Data(header.prefix(headerBytes)).write(to: URL(fileURLWithPath: path))
            let (again, recovered) = try Self.readAll(dir.path)
            #expect(again == records)
            #expect(recovered.lastLSN == result.lastLSN)
            try await Self.writeRecords(dir.path, count: 5, from: 30, lastLSN: recovered.lastLSN)
            let (after, _) = try Self.readAll(dir.path)
            #expect(after.count == 35)
            #expect(after.last?.payload == Self.payload(34))
        }
    }
}

/// The event loop's own write of a log, at the end of its turn.
@Suite("WAL: writes on the caller's thread")
struct WALCallerWriteTests {
    @Test func everysecWritesOnTheCallerAndAlwaysLeavesItToTheQueue() async throws {
        try await TemporaryDirectory.with { dir in
            let everysec = try WALWriter(
                directory: dir.path + "/everysec",
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .everysec)
            )
            // The first record opens a segment, which is the queue's to do.
            _ = try everysec.append(type: 1, payload: Array("first".utf8))
            #expect(!everysec.writeOnCaller(), "a new segment is not made on the caller's thread")
            try await everysec.flush()
            let second = try everysec.append(type: 1, payload: Array("second".utf8))
            let third = try everysec.append(type: 1, payload: Array("third".utf8))
            #expect(everysec.durableLSN < second)
            #expect(everysec.writeOnCaller())
            #expect(everysec.durableLSN == third)
            #expect(everysec.writeOnCaller(), "nothing left to write")
            try await everysec.close()
            var payloads: [String] = []
            _ = try WALReader(directory: dir.path + "/everysec").replay(repair: false) { _, _, payload in
                payloads.append(String(decoding: payload, as: UTF8.self))
            }
            #expect(payloads == ["first", "second", "third"])

            let always = try WALWriter(
                directory: dir.path + "/always",
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .always)
            )
            try await always.flush()
            let lsn = try always.append(type: 1, payload: Array("x".utf8))
            #expect(!always.writeOnCaller(), "an fdatasync never runs on the caller's thread")
            let failed = Mutex<Bool?>(nil)
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                always.whenDurable(lsn) { error in
                    failed.withLock { $0 = error != nil }
                    done.resume()
                }
            }
            #expect(failed.withLock { $0 } == false)
            #expect(always.durableLSN == lsn)
            try await always.close()
        }
    }

    @Test func aFailedWriteOnTheCallerFailsTheLogAndItsWaiters() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let writer = try WALWriter(
                directory: dir.path,
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .everysec),
                fileSystem: disk
            )
            _ = try writer.append(type: 1, payload: [1])
            try await writer.flush()
            let lsn = try writer.append(type: 1, payload: [2])
            disk.fail(.write, errno: EIO)
            #expect(writer.writeOnCaller(), "done: the log failed")
            #expect(writer.failure != nil)
            #expect(writer.durableLSN < lsn, "the failed record is not durable")
            let told = Mutex<Bool?>(nil)
            writer.whenDurable(lsn) { error in told.withLock { $0 = error != nil } }
            #expect(told.withLock { $0 } == true, "a later waiter is told at once")
        }
    }
}
