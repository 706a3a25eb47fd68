import Foundation
import NIOCore
import NIOEmbedded
import TenantEngine
import Testing

@testable import TenantServer

/// The migration client's reply decoder (issue 25, finding 9): a reply that arrives a few bytes at
/// a time is framed once as it comes (the scan goes on from where the last read stopped), decodes
/// to the same values whatever the split, and hostile replies are refused.
@Suite("Migration peer replies")
struct PeerReplyDecoderTests {
    /// The values a decoder on an `EmbeddedChannel` makes of `bytes` fed in pieces of `piece`.
    static func decode(_ bytes: [UInt8], piece: Int) throws -> [String] {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(PeerReplyDecoder()))
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + piece)
            try channel.writeInbound(ByteBuffer(bytes: bytes[offset..<end]))
            offset = end
        }
        var out: [String] = []
        while let reply = try channel.readInbound(as: PeerReply.self) { out.append(Self.describe(reply)) }
        _ = try? channel.finish()
        return out
    }

    static func describe(_ reply: PeerReply) -> String {
        switch reply {
        case .simple(let text): return "+\(text)"
        case .error(let text): return "-\(text)"
        case .integer(let value): return ":\(value)"
        case .bulk(let bytes): return bytes.map { "$" + String(decoding: $0, as: UTF8.self) } ?? "$nil"
        case .array(let items): return "[" + items.map(describe).joined(separator: ",") + "]"
        }
    }

    static let replies = Array(
        ("+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n_\r\n*0\r\n"
            + "*3\r\n$4\r\nwal/\r\n:7\r\n*2\r\n+a\r\n%1\r\n+k\r\n:1\r\n" + "*2\r\n*1\r\n*1\r\n:1\r\n+z\r\n").utf8
    )

    @Test func repliesDecodeTheSameWhateverTheSplit() throws {
        let whole = try Self.decode(Self.replies, piece: Self.replies.count)
        #expect(
            whole == [
                "+OK", "-ERR no", ":42", "$hello", "$nil", "$nil", "[]", "[$wal/,:7,[+a,[+k,:1]]]", "[[[:1]],+z]",
            ]
        )
        for piece in 1...9 { #expect(try Self.decode(Self.replies, piece: piece) == whole, "pieces of \(piece)") }
    }

    @Test func aLargeReplyTrickledInIsDecodedWhole() throws {
        // A BEGIN's file list: 20,000 files of four values, about 1 MB, 700 bytes a read.
        var text = "*20000\r\n"
        for index in 0..<20000 {
            text += "*4\r\n$12\r\nwal/f\(String(format: "%07d", index))\r\n:\(index)\r\n:\(index * 7)\r\n+x\r\n"
        }
        let decoded = try Self.decode(Array(text.utf8), piece: 700)
        #expect(decoded.count == 1)
        #expect(decoded.first?.hasPrefix("[[$wal/f0000000,:0,:0,+x],[$wal/f0000001,:1,:7,+x]") == true)
    }

    @Test func aLargeBulkTrickledInCountsAsOneValue() throws {
        // 400,000 reads of one byte each: were each rescan of the header counted as a value, the
        // 500,000-value bound would refuse this one string.
        let payload = String(repeating: "y", count: 600_000)
        let text = "*2\r\n$\(payload.utf8.count)\r\n\(payload)\r\n:1\r\n"
        let decoded = try Self.decode(Array(text.utf8), piece: 1)
        #expect(decoded == ["[$\(payload),:1]"])
    }

    @Test func hostileRepliesAreRefused() {
        for bad in [
            "*9999999\r\n", "$99999999999\r\n", "?\r\n", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            #expect(throws: (any Error).self, "\(bad)") { _ = try Self.decode(Array(bad.utf8), piece: 3) }
        }
    }
}
