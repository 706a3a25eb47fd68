/// One chat message.
public struct Message: Sendable, Hashable {
    /// Its place in its room, from 1, gap-free.
    public var seq: UInt64
    /// Milliseconds since the Unix epoch.
    public var timestamp: Int64
    public var user: String
    public var text: String

    /// Creates a message.
    public init(seq: UInt64, timestamp: Int64, user: String, text: String) {
        self.seq = seq
        self.timestamp = timestamp
        self.user = user
        self.text = text
    }
}

/// A run of consecutive messages of one room, as HISTORY returns them: their texts back to back
/// in one array, without a `String` or a ``Message`` per message (the server encodes a reply
/// straight from it).
public struct MessagePage: Sendable, Hashable {
    /// The first message's seq; the others follow it one by one.
    public var firstSeq: UInt64 = 1
    /// Each message's time, in milliseconds since the Unix epoch.
    public var timestamps: [Int64] = []
    /// Each message's author (the room's own strings, shared, not copied).
    public var users: [String] = []
    /// Every text, UTF-8, back to back.
    public var texts: [UInt8] = []
    /// Message `i`'s text ends at `ends[i]` in ``texts`` and starts where the one before it ends.
    public var ends: [Int] = []

    /// Creates an empty page.
    public init() {}

    /// The number of messages.
    public var count: Int { self.ends.count }

    /// Message `index`'s seq.
    public func seq(at index: Int) -> UInt64 { self.firstSeq + UInt64(index) }

    /// Message `index`'s text, as bytes.
    public func text(at index: Int) -> ArraySlice<UInt8> {
        self.texts[(index == 0 ? 0 : self.ends[index - 1])..<self.ends[index]]
    }

    /// The messages, as values.
    public var messages: [Message] {
        (0..<self.count).map { index in
            Message(
                seq: self.seq(at: index),
                timestamp: self.timestamps[index],
                user: self.users[index],
                text: String(decoding: self.text(at: index), as: UTF8.self)
            )
        }
    }

    /// Messages `range` of the page, as a page.
    public func slice(_ range: Range<Int>) -> MessagePage {
        guard range != 0..<self.count else { return self }
        var page = MessagePage()
        page.firstSeq = self.firstSeq + UInt64(range.lowerBound)
        page.timestamps = Array(self.timestamps[range])
        page.users = Array(self.users[range])
        let start = range.lowerBound == 0 ? 0 : self.ends[range.lowerBound - 1]
        let end = range.isEmpty ? start : self.ends[range.upperBound - 1]
        page.texts = Array(self.texts[start..<end])
        page.ends = self.ends[range].map { $0 - start }
        return page
    }
}

extension Message {
    /// The pub/sub payload, as the contract gives it: `{"seq":..,"ts":..,"user":"..","text":".."}`.
    public var jsonPayload: String {
        "{\"seq\":\(self.seq),\"ts\":\(self.timestamp),\"user\":\(JSONString.quoted(self.user)),\"text\":\(JSONString.quoted(self.text))}"
    }
}
