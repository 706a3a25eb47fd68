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

    /// What HISTORY returned before pages: the query's messages, then the longest run from the
    /// end it keeps whose texts fit the cap (one message at least).
    static func reference(_ all: [Message], after: UInt64?, before: UInt64?, limit: Int, cap: Int) -> [Message] {
        let count = all.count
        let range: Range<Int>
        if let after {
            let start = Int(min(after, UInt64(count)))
            range = start..<min(count, start + limit)
        } else {
            let end = before.map { Int(min(UInt64(count), $0 == 0 ? 0 : $0 - 1)) } ?? count
            range = max(0, end - limit)..<end
        }
        let page = Array(all[range])
        var total = 0
        var kept = 0
        while kept < page.count {
            total += page[after != nil ? kept : page.count - 1 - kept].text.utf8.count
            if kept > 0 && total > cap { break }
            kept += 1
        }
        return after != nil ? Array(page.prefix(kept)) : Array(page.suffix(kept))
    }

    /// A room of several chunks (texts up to 70,000 bytes seal chunks early): every query's page,
    /// cut to the cap before its texts are copied, is encoded as the old reply was.
    @Test func aRoomsPagesAcrossChunksAreTheOldReplies() throws {
        var room = Room()
        var all: [Message] = []
        let texts = [
            "", "héllo", "日本語", String(repeating: "x", count: 70_000), "🙂 a\r\nb", String(repeating: "y", count: 9_000),
        ]
        for index in 0..<1_300 {
            let message = Message(
                seq: UInt64(index + 1),
                timestamp: index % 2 == 0 ? 1_795_000_000_000 + Int64(index) : Int64.min + Int64(index),
                user: ["alice", "bob", "グレース-\(index % 5)"][index % 3],
                text: texts[index % texts.count]
            )
            try room.apply(message)
            all.append(message)
        }
        #expect(room.chunkCount > 3)
        let queries: [(UInt64?, UInt64?)] = [
            (nil, nil), (0, nil), (1, nil), (700, nil), (1_299, nil), (1_300, nil),
            (UInt64.max, nil), (nil, 0), (nil, 1), (nil, 2), (nil, 650), (nil, 1_301), (nil, UInt64.max),
        ]
        for (after, before) in queries {
            for limit in [1, 3, 50, 1000] {
                for cap in [1, 20_000, 100_000, 4 << 20] {
                    let page = try room.historyPage(after: after, before: before, limit: limit, maxTextBytes: cap)
                    let expected = Self.reference(all, after: after, before: before, limit: limit, cap: cap)
                    #expect(
                        page.messages == expected,
                        "after \(String(describing: after)) before \(String(describing: before)) limit \(limit) cap \(cap)"
                    )
                    #expect(
                        CommandDispatcher.encodeHistory(page) == Self.valueReply(expected, version: .resp3),
                        "encoded: after \(String(describing: after)) before \(String(describing: before)) limit \(limit)"
                    )
                }
            }
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
