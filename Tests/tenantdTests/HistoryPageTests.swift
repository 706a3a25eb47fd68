import NIOCore
import RESP
import Testing

@testable import TenantEngine
@testable import TenantServer

/// HISTORY's reply encoded straight from a page of columns: byte for byte what the reply built
/// from `Message` values was, under RESP2 and RESP3; pages cut by the text cap keep the right end.
@Suite("HISTORY pages")
struct HistoryPageTests {
    /// The reply as it was built before pages: a value per message, encoded by the encoder.
    static func valueReply(_ messages: [Message], version: RESPVersion) -> ByteBuffer {
        RESPEncoder.encode(
            .array(
                messages.map {
                    .array([
                        .integer(Int64($0.seq)), .integer($0.timestamp), .bulkString($0.user), .bulkString($0.text),
                    ])
                }
            ),
            version: version
        )
    }

    static func page(_ texts: [String], firstSeq: UInt64 = 1) -> MessagePage {
        var page = MessagePage()
        page.firstSeq = firstSeq
        for (index, text) in texts.enumerated() {
            page.timestamps.append(index % 2 == 0 ? 1_764_000_000_000 + Int64(index) : -Int64(index))
            page.users.append(["alice", "bob", "グレース", ""][index % 4])
            page.texts.append(contentsOf: Array(text.utf8))
            page.ends.append(page.texts.count)
        }
        return page
    }

    static let texts = ["hello", "", "привет мир", "🙂 emoji", "a\r\nb", String(repeating: "x", count: 70_000)]

    @Test(arguments: [RESPVersion.resp2, .resp3])
    func aPageIsEncodedAsTheValuesWere(version: RESPVersion) {
        for firstSeq in [UInt64(1), 9, 1_000_000_007, UInt64(Int64.max) - 10] {
            let page = Self.page(Self.texts, firstSeq: firstSeq)
            var direct = ByteBuffer()
            RESPEncoder.encode(.encoded(CommandDispatcher.encodeHistory(page)), version: version, into: &direct)
            #expect(direct == Self.valueReply(page.messages, version: version))
        }
        #expect(CommandDispatcher.encodeHistory(MessagePage()) == ByteBuffer(string: "*0\r\n"))
    }

    @Test func decimalsAreWrittenWithoutStrings() {
        for number: Int64 in [0, 7, -7, 10, 99, 100, Int64.max, Int64.min, -1_000_000] {
            var buffer = ByteBuffer()
            RESPEncoder.writeDecimal(number, into: &buffer)
            #expect(String(buffer: buffer) == String(number))
        }
        var buffer = ByteBuffer()
        RESPEncoder.writeDecimal(UInt64.max, into: &buffer)
        #expect(String(buffer: buffer) == String(UInt64.max))
    }

    @Test func aSliceIsThePageItsMessagesWouldMake() {
        let page = Self.page(Self.texts, firstSeq: 40)
        for range in [0..<6, 0..<0, 0..<1, 2..<5, 5..<6, 3..<3] {
            let slice = page.slice(range)
            #expect(slice.messages == Array(page.messages[range]), "\(range)")
            #expect(slice.count == range.count)
        }
    }

    @Test func theTextCapKeepsTheEndThePageIsReadFrom() {
        let page = Self.page(["aaaa", "bbbb", "cccc", "dddd"], firstSeq: 10)
        // Newest first (no AFTER): the last messages that fit 9 bytes.
        let newest = MessageStore.capped(page, keepingOldest: false, maxTextBytes: 9)
        #expect(newest.messages.map(\.seq) == [12, 13])
        // With AFTER: the first ones.
        let oldest = MessageStore.capped(page, keepingOldest: true, maxTextBytes: 9)
        #expect(oldest.messages.map(\.seq) == [10, 11])
        // One message always, however long.
        let one = MessageStore.capped(page, keepingOldest: true, maxTextBytes: 1)
        #expect(one.messages.map(\.text) == ["aaaa"])
        #expect(MessageStore.capped(page, keepingOldest: false, maxTextBytes: 100) == page)
    }
}
