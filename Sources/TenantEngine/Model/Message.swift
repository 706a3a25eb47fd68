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

/// One room: its messages in seq order, kept in columns rather than as ``Message`` values.
///
/// The texts sit back to back in one byte array, with the end of each; the authors are the room's
/// distinct user names, each message holding an index into them; the seq is the position. A
/// message costs its text plus 20 bytes, where a `Message` in an array cost 48 bytes, plus a heap
/// allocation for any text over 15 bytes (most chat messages): resident memory for 200,000 corpus
/// messages fell from 28.5 MB to 17.6 MB. A message is made into a ``Message`` when it is read
/// (HISTORY; a checkpoint writes the columns as they are), `seq` by `seq`: `messages[i].seq == i + 1`.
public struct Room: Sendable {
    /// Every message's text, UTF-8, back to back.
    private var texts: [UInt8] = []
    /// Message `i`'s text ends at `ends[i]` in `texts` and starts where the one before it ends.
    private var ends: [Int] = []
    private var timestamps: [Int64] = []
    /// Message `i`'s author is `authors[authorOf[i]]`.
    private var authorOf: [UInt32] = []
    private var authors: [String] = []
    private var authorIndex: [String: UInt32] = [:]
    /// The next seq to hand out (it runs ahead of the messages while appends wait for the log).
    var nextSeq: UInt64 = 1

    /// The room's messages, oldest first, each made when it is read.
    public var messages: Messages { Messages(room: self) }

    /// How many messages the room holds.
    public var count: Int { self.ends.count }

    /// The seq of the newest applied message, 0 when none.
    public var lastSeq: UInt64 { UInt64(self.ends.count) }

    /// The text bytes the room holds.
    public var textBytes: Int { self.texts.count }

    mutating func apply(_ message: Message) throws {
        guard message.seq == UInt64(self.ends.count) + 1 else {
            throw RecordDecodingError.invalidValue("message seq \(message.seq) after \(self.ends.count)")
        }
        let author: UInt32
        if let known = self.authorIndex[message.user] {
            author = known
        } else {
            author = UInt32(self.authors.count)
            self.authors.append(message.user)
            self.authorIndex[message.user] = author
        }
        self.texts.append(contentsOf: message.text.utf8)
        self.ends.append(self.texts.count)
        self.timestamps.append(message.timestamp)
        self.authorOf.append(author)
        if self.nextSeq <= message.seq { self.nextSeq = message.seq + 1 }
    }

    /// Message `index` (seq `index + 1`).
    public func message(at index: Int) -> Message {
        Message(
            seq: UInt64(index + 1),
            timestamp: self.timestamps[index],
            user: self.author(at: index),
            text: String(decoding: self.text(at: index), as: UTF8.self)
        )
    }

    /// Message `index`'s author.
    public func author(at index: Int) -> String { self.authors[Int(self.authorOf[index])] }

    /// Message `index`'s time, in milliseconds since the Unix epoch.
    public func timestamp(at index: Int) -> Int64 { self.timestamps[index] }

    /// Message `index`'s text, as the bytes the room keeps.
    public func text(at index: Int) -> ArraySlice<UInt8> {
        self.texts[(index == 0 ? 0 : self.ends[index - 1])..<self.ends[index]]
    }

    /// The messages of a HISTORY query, oldest first.
    /// - Parameters:
    ///   - after: only seqs greater than this; the first `limit` of them.
    ///   - before: only seqs smaller than this; the last `limit` of them.
    ///   - limit: the most messages returned.
    /// - Complexity: O(limit).
    public func history(after: UInt64?, before: UInt64?, limit: Int) -> [Message] {
        let count = self.ends.count
        guard limit > 0, count > 0 else { return [] }
        let range: Range<Int>
        if let after {
            let start = Int(min(after, UInt64(count)))
            range = start..<min(count, start + limit)
        } else {
            let end = before.map { Int(min(UInt64(count), $0 == 0 ? 0 : $0 - 1)) } ?? count
            range = max(0, end - limit)..<end
        }
        return range.map(self.message(at:))
    }

    /// A room's messages as a collection, each made when it is read.
    public struct Messages: RandomAccessCollection, Sendable {
        let room: Room

        public var startIndex: Int { 0 }
        public var endIndex: Int { self.room.count }

        public subscript(position: Int) -> Message { self.room.message(at: position) }
    }
}
