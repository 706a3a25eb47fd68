import LZ4
import NIOCore
import RESP
import Testing
import WAL

/// Issue 22, point 3: the limits files of the log, the protocol and lz4 (`WALLimits`,
/// `RESPLimits`, `LZ4Limits`) hold together, and the code reads them.
@Suite("Format limits")
struct FormatLimitsTests {
    @Test func theLogsLimitsHoldTogether() {
        // A record of the largest size fits a segment, and its stored form a u32 length field.
        #expect(WALLimits.defaultMaxRecordSize < WALLimits.defaultSegmentSize)
        let stored = WALFormat.maxStoredSize(forRecordSize: WALLimits.defaultMaxRecordSize)
        #expect(stored >= LZ4Block.compressBound(WALLimits.defaultMaxRecordSize))
        #expect(stored + WALFormat.recordHeaderSize <= Int(UInt32.max))
        // A shortage holds back at least one record of the largest size.
        #expect(WALLimits.maxHeldBackBytes >= stored + WALFormat.recordHeaderSize)
        #expect(WALLimits.fileSystemSyncThreshold > 1)
        #expect(WALLimits.copyChunkSize > 0 && WALLimits.maxTreeDepth >= 2)
        // The configuration's defaults are the limits.
        let configuration = WALConfiguration()
        #expect(configuration.maxRecordSize == WALLimits.defaultMaxRecordSize)
        #expect(configuration.segmentSize == WALLimits.defaultSegmentSize)
    }

    @Test func theProtocolsLimitsHoldTogetherAndAreTheParsersDefaults() {
        #expect(RESPLimits.unauthenticatedBulkLength < RESPLimits.maxBulkLength)
        #expect(RESPLimits.maxBulkLength <= RESPLimits.protocolMaxBulk)
        #expect(RESPLimits.maxRequestBytes >= RESPLimits.maxBulkLength + RESPLimits.argumentOverhead)
        #expect(RESPLimits.unauthenticatedArgumentCount < RESPLimits.maxArgumentCount)
        // A count line holds the longest count: its digits, a sign, the type byte and CRLF.
        #expect(RESPLimits.maxCountDigits >= String(Int64.min).count)
        #expect(RESPLimits.maxCountLine > RESPLimits.maxCountDigits + 3)
        // Redis's numbers, which the contract takes.
        #expect(RESPLimits.maxInlineLength == 64 * 1024)
        #expect(RESPLimits.protocolMaxBulk == 512 * 1024 * 1024)
        let limits = RESPRequestParser.Limits()
        #expect(limits.maxBulkLength == RESPLimits.maxBulkLength)
        #expect(limits.maxInlineLength == RESPLimits.maxInlineLength)
        #expect(limits.maxArgumentCount == RESPLimits.maxArgumentCount)
        #expect(limits.maxRequestBytes == RESPLimits.maxRequestBytes)
        #expect(limits.unauthenticatedArgumentCount == RESPLimits.unauthenticatedArgumentCount)
        #expect(limits.unauthenticatedBulkLength == RESPLimits.unauthenticatedBulkLength)
    }

    @Test func aCountOfMoreDigitsThanTheLimitIsAProtocolError() {
        // Leading zeros: the count is 1 either way, only its digits differ.
        let digits = RESPLimits.maxCountDigits
        var parser = RESPRequestParser()
        var long = ByteBuffer(string: "*" + String(repeating: "0", count: digits) + "1\r\n")
        let parsed = parser.next(&long)
        guard case .protocolError = parsed else {
            Issue.record("a count of \(digits + 1) digits was taken: \(parsed)")
            return
        }
        var fitting = RESPRequestParser()
        var fits = ByteBuffer(string: "*" + String(repeating: "0", count: digits - 1) + "1\r\n$4\r\nPING\r\n")
        let taken = fitting.next(&fits)
        guard case .command(let words) = taken else {
            Issue.record("a count of \(digits) digits was refused: \(taken)")
            return
        }
        #expect(words.map { String(buffer: $0) } == ["PING"])
    }

    @Test func lz4sWindowIsItsLargestMatchDistance() throws {
        // lz4's match offsets are 16 bits: 65,535 back at most, so a window of 64 KiB is enough
        // and a smaller one would break streams that refer that far.
        #expect(LZ4Limits.windowSize == 1 << 16)
        #expect(LZ4Limits.bufferAlignment.nonzeroBitCount == 1)
        // A stream whose second block repeats the first, 60 KiB back, still decodes.
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        let first = (0..<(60 * 1024)).map { _ -> UInt8 in
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: seed >> 56)
        }
        let compressor = LZ4StreamCompressor(maxBlockSize: first.count)
        let decompressor = LZ4StreamDecompressor(maxBlockSize: first.count)
        var sizes: [Int] = []
        for _ in 0..<2 {
            var compressed: [UInt8] = []
            let count = try first.withUnsafeBytes { try compressor.compress($0, appendingTo: &compressed) }
            sizes.append(count)
            let decoded = try compressed.withUnsafeBytes {
                Array(try decompressor.decompress($0, decodedSize: first.count))
            }
            #expect(decoded == first)
        }
        // The second block refers to the first through the window: it is far smaller.
        #expect(sizes[1] * 10 < sizes[0])
    }
}
