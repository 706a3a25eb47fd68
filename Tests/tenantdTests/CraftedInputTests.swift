import Foundation
import LZ4
import TestSupport
import Testing

@testable import TenantEngine
@_spi(Fuzzing) @testable import WAL

/// Files with valid checksums whose numbers are crafted to break the decoders: each must be
/// refused with a corruption error, never trap. The fuzzers' crashers are kept as inputs in
/// `Fuzz/Regressions/`; these are the same cases, made by hand.
@Suite("Crafted inputs")
struct CraftedInputTests {
    /// A checkpoint body: no metadata, `users` as the user count, then one room `r` written by
    /// `room` after its name.
    static func body(users: UInt64 = 0, room: ((inout BinaryWriter) -> Void)? = nil) -> [UInt8] {
        var writer = BinaryWriter()
        writer.write(bytes: [])
        writer.writeVarint(users)
        writer.writeVarint(room == nil ? 0 : 1)
        if let room {
            writer.write("r")
            room(&writer)
        }
        return writer.bytes
    }

    /// The room columns of `count` messages by one author `u`, with these timestamp deltas and
    /// text lengths (the texts themselves follow, as many bytes as the lengths add up to).
    static func room(count: UInt64, deltas: [Int64], lengths: [UInt64]) -> (inout BinaryWriter) -> Void {
        { writer in
            writer.writeVarint(count)
            writer.writeVarint(1)
            writer.write("u")
            for delta in deltas { writer.writeSignedVarint(delta) }
            for _ in deltas { writer.writeVarint(0) }
            for length in lengths { writer.writeVarint(length) }
            let total = lengths.reduce(0) { $0 &+ $1 }
            writer.bytes += Array(repeating: UInt8(ascii: "x"), count: Int(min(total, 64)))
        }
    }

    /// Decodes `body` inside a checkpoint file with valid checksums.
    /// - Returns: the description of the error the decoder threw, nil if it decoded.
    static func decodeError(_ body: [UInt8], lsn: UInt64 = 7) throws -> String? {
        let file = try Checkpoint.encode(body: body, lsn: lsn)
        do {
            _ = try Checkpoint.decode(bytes: file, path: "crafted.ckpt")
            return nil
        } catch let error as WALError {
            return error.description
        }
    }

    /// A user whose token hash is not a SHA-256 (none, or 7 bytes), in a checkpoint or a log
    /// record: refused as input, never a trap when the tenant's credential keys are made.
    @Test(arguments: [0, 7, 31, 33])
    func aTokenHashOfAnotherSizeIsRefused(size: Int) throws {
        var writer = BinaryWriter()
        writer.write(bytes: [])
        writer.writeVarint(1)
        writer.write("eve")
        writer.write("owner")
        writer.write(bytes: [UInt8](repeating: 1, count: size))
        writer.write(Int64(0))
        writer.writeVarint(0)
        let error = try #require(try Self.decodeError(writer.bytes))
        #expect(error.contains("token hash"), "\(error)")

        var record = BinaryWriter()
        record.write("eve")
        record.write("owner")
        record.write(bytes: [UInt8](repeating: 1, count: size))
        record.write(Int64(0))
        #expect(throws: RecordDecodingError.self) {
            _ = try record.bytes.withUnsafeBytes {
                try TenantRecord.decode(type: TenantRecord.Kind.userPut.rawValue, payload: $0)
            }
        }
        // The key of such a hash is made without a trap (and matches no token).
        #expect(CredentialKey(user: "eve", tokenHash: []) != CredentialKey(user: "eve", tokenHash: Tokens.hash("x")))
    }

    @Test func aDecompressionBombIsRefusedBeforeItExpands() throws {
        // 260 MiB of zeros in 4 MiB blocks make a file of about 1 MB: over 256 MiB and 64 times
        // the file, refused at the block that would pass the bound, before it is decompressed.
        // (The format of earlier versions, held to 64 times the file as a whole; version 2 holds
        // each block to it: CraftedTenantTests.versionTwoBlocksAreHeldToTheirBound.)
        let body = [UInt8](repeating: 0, count: 260 << 20)
        let file = try Checkpoint.encode(body: body, lsn: 7, version: 1)
        #expect(file.count < 4 << 20)
        #expect(throws: WALError.self) { _ = try Checkpoint.decode(bytes: file, path: "bomb.ckpt") }
        do {
            _ = try Checkpoint.decode(bytes: file, path: "bomb.ckpt")
        } catch let error as WALError {
            #expect(error.description.contains("64 times the file"), "\(error)")
        }
    }

    @Test(arguments: [UInt64(1) << 63, UInt64.max, UInt64(Int64.max)])
    func messageCountBeyondTheBodyIsRefused(count: UInt64) throws {
        let body = Self.body(room: { writer in writer.writeVarint(count) })
        let error = try #require(try Self.decodeError(body))
        #expect(error.contains("message count"), "\(error)")
    }

    @Test(arguments: [UInt64(1) << 63, UInt64.max, 1 << 40])
    func userCountBeyondTheBodyIsRefusedBeforeReadingUsers(count: UInt64) throws {
        let error = try #require(try Self.decodeError(Self.body(users: count)))
        #expect(error.contains("user count"), "\(error)")
    }

    @Test(arguments: [UInt64(1) << 63, UInt64.max])
    func authorCountBeyondTheBodyIsRefused(count: UInt64) throws {
        let body = Self.body(room: { writer in
            writer.writeVarint(1)
            writer.writeVarint(count)
        })
        let error = try #require(try Self.decodeError(body))
        #expect(error.contains("author count"), "\(error)")
    }

    @Test(arguments: [[Int64.max, 1], [Int64.min, -1], [Int64.max, Int64.max, Int64.max]])
    func timestampDeltasThatOverflowAreRefused(deltas: [Int64]) throws {
        let count = UInt64(deltas.count)
        let body = Self.body(
            room: Self.room(count: count, deltas: deltas, lengths: Array(repeating: 1, count: deltas.count))
        )
        let error = try #require(try Self.decodeError(body))
        #expect(error.contains("timestamp"), "\(error)")
    }

    @Test(arguments: [UInt64(1) << 63, UInt64.max])
    func textLengthBeyondTheBodyIsRefused(length: UInt64) throws {
        let body = Self.body(room: Self.room(count: 1, deltas: [1], lengths: [length]))
        let error = try #require(try Self.decodeError(body))
        #expect(error.contains("text length"), "\(error)")
    }

    @Test func theCraftingHelpersMakeADecodableCheckpoint() throws {
        // The crafted cases above differ from this one only in the number they break.
        let body = Self.body(room: Self.room(count: 2, deltas: [1_000, 5], lengths: [1, 2]))
        #expect(try Self.decodeError(body) == nil)
        let (state, lsn) = try Checkpoint.decode(bytes: try Checkpoint.encode(body: body, lsn: 7), path: "ok.ckpt")
        #expect(lsn == 7)
        #expect(try state.rooms["r"]?.allMessages().map(\.timestamp) == [1_000, 1_005])
        #expect(try state.rooms["r"]?.allMessages().map(\.text) == ["x", "xx"])
    }

    @Test func checkpointLSNWithoutASuccessorIsRefused() throws {
        let error = try #require(try Self.decodeError(Self.body(), lsn: .max))
        #expect(error.contains("out of range"), "\(error)")
    }

    /// A segment file named for `firstLSN` holding one record at that lsn, with valid checksums.
    static func segment(firstLSN: UInt64) throws -> [UInt8] {
        let payload: [UInt8] = [1, 2, 3]
        let stored = try LZ4Block.compress(payload)
        var record = [UInt8](repeating: 0, count: 4)
        record.appendLittleEndian(UInt32(stored.count))
        record.append(4)
        record.appendLittleEndian(firstLSN)
        record.appendLittleEndian(UInt32(payload.count))
        record += stored
        let crc = record.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[4...])) }
        record.storeLittleEndian(CRC32C.mask(crc), at: 0)
        return WALFormat.segmentHeader(firstLSN: firstLSN) + record
    }

    @Test(arguments: [UInt64.max, UInt64.max - 1, UInt64(Int64.max) + 1])
    func segmentAtTheLastLSNIsRefused(lsn: UInt64) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let bytes = try Self.segment(firstLSN: lsn)
        try Data(bytes).write(to: URL(fileURLWithPath: dir.path + "/" + WALFormat.segmentName(firstLSN: lsn)))
        // Behind a checkpoint just before it, as a crafted tenant directory would have it.
        let reader = WALReader(directory: dir.path)
        let error = #expect(throws: WALError.self) {
            try reader.replayRecords(repair: false, after: lsn - 1) { _ in }
        }
        #expect(error?.description.contains("out of range") == true, "\(String(describing: error))")
        #expect(throws: WALError.self) { try WALReader.readSegment(bytes, firstLSN: lsn, isLast: true) { _ in } }
    }

    /// The inputs kept in `Fuzz/Regressions/<target>/`, crashers found (or made) and fixed.
    static func regressions(_ target: String) -> [String] {
        let directory = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fuzz/Regressions/" + target).path
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.sorted().map { directory + "/" + $0 }
    }

    @Test func theFuzzRegressionsAreFound() {
        #expect(Self.regressions("FuzzCheckpoint").count >= 6)
        #expect(!Self.regressions("FuzzWALSegment").isEmpty)
    }

    /// As the fuzzer reads them: a checkpoint file, or else a body inside a valid one.
    @Test(arguments: regressions("FuzzCheckpoint"))
    func checkpointFuzzRegressionIsRefused(path: String) throws {
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        let file = bytes.starts(with: Checkpoint.magic) ? bytes : try Checkpoint.encode(body: bytes, lsn: 1)
        #expect(throws: WALError.self) { try Checkpoint.decode(bytes: file, path: path) }
    }

    @Test(arguments: regressions("FuzzWALSegment"))
    func segmentFuzzRegressionIsRefused(path: String) throws {
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        let firstLSN = try #require(bytes.withUnsafeBytes { WALFormat.parseSegmentHeader($0) })
        #expect(throws: WALError.self) { try WALReader.readSegment(bytes, firstLSN: firstLSN, isLast: true) { _ in } }
    }

    @Test func segmentBelowTheLastLSNStillReads() throws {
        let lsn = WALFormat.maxLSN - 1
        var records: [UInt64] = []
        let result = try WALReader.readSegment(try Self.segment(firstLSN: lsn), firstLSN: lsn, isLast: true) {
            records.append($0.lsn)
        }
        #expect(records == [lsn])
        #expect(result.tornTail == nil)
    }
}
