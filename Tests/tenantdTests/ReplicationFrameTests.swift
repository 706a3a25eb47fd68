import Testing
import WAL

@_spi(Fuzzing) @testable import TenantEngine

/// Issue 23, first step: the replication stream's frames (docs/architecture.md, "Replicas").
/// Every kind round-trips, a stream split anywhere decodes only once whole, and every malformed
/// frame is refused with an error, never taken (the fuzz target `FuzzReplicationStream` tries
/// the rest).
@Suite("Replication frames")
struct ReplicationFrameTests {
    static let replicationID = "aaaaaaaa0123456789abcdefffffffffffffffff"
    static let frames: [ReplicationFrame] = [
        .hello(replicationID: Self.replicationID, offset: 0, epoch: 1),
        .snapshotBegin(tenant: "acme1234", lsn: 41, size: 10),
        .snapshotChunk(tenant: "acme1234", offset: 0, bytes: Array("checkpoint".utf8)),
        .snapshotEnd(tenant: "acme1234", crc: CRC32C.checksum(Array("checkpoint".utf8))),
        .record(tenant: "acme1234", lsn: 42, type: TenantRecord.Kind.message.rawValue, payload: [7, 1, 2]),
        .drop(tenant: "acme1234"),
        .ping(offset: 1234),
        .snapshotChunk(tenant: "t", offset: 5, bytes: []),
    ]

    static func decode(_ bytes: [UInt8]) throws -> (frame: ReplicationFrame, consumed: Int)? {
        try bytes.withUnsafeBytes { try ReplicationFrame.decode($0) }
    }

    static func refusal(_ bytes: [UInt8]) -> ReplicationStreamError? {
        do {
            _ = try Self.decode(bytes)
            return nil
        } catch let error as ReplicationStreamError {
            return error
        } catch {
            Issue.record("not a ReplicationStreamError: \(error)")
            return nil
        }
    }

    /// A body with its length and checksum right.
    static func framed(_ body: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        ReplicationFrame.frame(body: body, into: &bytes)
        return bytes
    }

    static func short(_ text: String) -> [UInt8] { [UInt8(text.utf8.count)] + Array(text.utf8) }

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    @Test func everyKindRoundTrips() throws {
        for frame in Self.frames {
            let bytes = frame.encoded()
            let decoded = try #require(try Self.decode(bytes))
            #expect(decoded.frame == frame)
            #expect(decoded.consumed == bytes.count)
        }
    }

    @Test func theFormatIsTheDocumentedOne() throws {
        // Encoded by an independent implementation of docs/architecture.md's layout (Python,
        // bit-by-bit CRC-32C): a record frame of tenant acme1234 at lsn 42.
        let hex = "24000000e03e0fb3050861636d65313233342a00000000000000040d0000000767656e6572616c68656c6c6f"
        let bytes = stride(from: 0, to: hex.count, by: 2).map {
            UInt8(hex.dropFirst($0).prefix(2), radix: 16)!
        }
        let expected = ReplicationFrame.record(
            tenant: "acme1234",
            lsn: 42,
            type: 4,
            payload: [7] + Array("generalhello".utf8)
        )
        #expect(try Self.decode(bytes)?.frame == expected)
        #expect(expected.encoded() == bytes)
    }

    @Test func aStreamSplitAnywhereDecodesOnlyWhole() throws {
        var stream: [UInt8] = []
        for frame in Self.frames { frame.encode(into: &stream) }
        for cut in 0...stream.count {
            var decoded: [ReplicationFrame] = []
            var offset = 0
            let prefix = Array(stream.prefix(cut))
            while let (frame, consumed) = try prefix.withUnsafeBytes({
                try ReplicationFrame.decode(UnsafeRawBufferPointer(rebasing: $0[offset...]))
            }) {
                decoded.append(frame)
                offset += consumed
            }
            // Only the frames wholly inside the cut, in order; the rest waits for more bytes.
            #expect(decoded == Array(Self.frames.prefix(decoded.count)))
            let whole = Self.frames.prefix(decoded.count + 1).reduce(0) { $0 + $1.encoded().count }
            #expect(decoded.count == Self.frames.count || whole > cut)
        }
    }

    @Test func aDamagedFrameIsRefusedWherever() {
        let bytes = ReplicationFrame.record(tenant: "acme1234", lsn: 42, type: 4, payload: [1, 2, 3]).encoded()
        for index in 0..<bytes.count {
            for bit in 0..<8 {
                var damaged = bytes
                damaged[index] ^= 1 << bit
                if index >= 4 {
                    // The checksum or the body it covers: refused.
                    #expect(Self.refusal(damaged) == .checksum, "byte \(index) bit \(bit)")
                } else {
                    // The length: more bytes awaited, out of bounds, or a body the checksum does
                    // not fit. Never a frame.
                    let decoded = try? Self.decode(damaged)
                    #expect(decoded == nil, "byte \(index) bit \(bit)")
                }
            }
        }
    }

    @Test func lengthsOutOfBoundsAreRefusedBeforeWaitingForThem() {
        #expect(Self.refusal([0, 0, 0, 0, 0, 0, 0, 0]) == .badLength(0))
        let tooLong = Self.le(UInt32(EngineLimits.replicationMaxFrameBytes + 1)) + [0, 0, 0, 0]
        #expect(Self.refusal(tooLong) == .badLength(EngineLimits.replicationMaxFrameBytes + 1))
        #expect(Self.refusal(Self.le(UInt32.max) + [0, 0, 0, 0]) == .badLength(Int(UInt32.max)))
        // A smaller bound is the caller's to give.
        let frame = ReplicationFrame.ping(offset: 1).encoded()
        #expect(throws: ReplicationStreamError.badLength(9)) {
            _ = try frame.withUnsafeBytes { try ReplicationFrame.decode($0, maxFrameBytes: 8) }
        }
    }

    @Test func craftedBodiesWithAValidChecksumAreRefusedForTheirReason() {
        let tenant = Self.short("acme1234")
        let noHex = String(repeating: "z", count: 40)
        let tooBig = EngineLimits.replicationChunkSize + 1
        let cases: [(ReplicationStreamError, [UInt8])] = [
            (.unknownKind(99), [99]),
            (.malformed("record payload is truncated"), [5]),
            (.malformed("trailing bytes in a ping frame"), [7] + Self.le(UInt64(1)) + [0]),
            (.malformed("bad tenant id"), [6] + Self.short("Acme!")),
            (.malformed("bad tenant id"), [6, 0]),
            (.malformed("record payload is truncated"), [6, 200, 0x61]),
            (
                .malformed("replication id is not 40 hex digits"),
                [1] + Self.short(noHex) + Self.le(UInt64(0)) + Self.le(UInt64(0))
            ),
            (
                .malformed("replication id is not 40 hex digits"),
                [1] + Self.short("abc") + Self.le(UInt64(0)) + Self.le(UInt64(0))
            ),
            (.malformed("lsn 0"), [5] + tenant + Self.le(UInt64(0)) + [4] + Self.le(UInt32(0))),
            (.malformed("lsn \(UInt64.max)"), [5] + tenant + Self.le(UInt64.max) + [4] + Self.le(UInt32(0))),
            (.malformed("unknown record type 200"), [5] + tenant + Self.le(UInt64(1)) + [200] + Self.le(UInt32(0))),
            (.malformed("record payload is truncated"), [5] + tenant + Self.le(UInt64(1)) + [4] + Self.le(UInt32.max)),
            (
                .malformed("snapshot of \(UInt64.max) bytes"),
                [2] + tenant + Self.le(UInt64(1)) + Self.le(UInt64.max)
            ),
            (
                .malformed("snapshot chunk out of bounds"),
                [3] + tenant + Self.le(UInt64(0)) + Self.le(UInt32(tooBig)) + [UInt8](repeating: 0, count: tooBig)
            ),
            (.malformed("record holds invalid UTF-8"), [6, 2, 0xC3, 0x28]),
        ]
        for (reason, body) in cases {
            #expect(Self.refusal(Self.framed(body)) == reason, "\(reason)")
        }
    }

    @Test func aChunkEndsAtTheSnapshotBoundAtMost() throws {
        let tenant = Self.short("acme1234")
        let bound = EngineLimits.replicationMaxSnapshotBytes
        func chunk(at offset: UInt64) -> [UInt8] {
            Self.framed([3] + tenant + Self.le(offset) + Self.le(UInt32(3)) + [1, 2, 3])
        }
        #expect(
            try Self.decode(chunk(at: bound - 3))?.frame
                == .snapshotChunk(tenant: "acme1234", offset: bound - 3, bytes: [1, 2, 3])
        )
        #expect(Self.refusal(chunk(at: bound - 2)) == .malformed("snapshot chunk out of bounds"))
        #expect(Self.refusal(chunk(at: UInt64.max)) == .malformed("snapshot chunk out of bounds"))
    }

    @Test func theFuzzEntryPointCountsWholeFrames() {
        var stream: [UInt8] = []
        for frame in Self.frames { frame.encode(into: &stream) }
        #expect(DecoderEntryPoints.decodeReplicationStream(stream) == Self.frames.count)
        #expect(DecoderEntryPoints.decodeReplicationStream(Array(stream.dropLast())) == Self.frames.count - 1)
        #expect(DecoderEntryPoints.decodeReplicationStream(stream + [0, 0, 0, 0, 0, 0, 0, 0]) == Self.frames.count)
    }
}
