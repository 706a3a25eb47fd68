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

/// One room: its messages in seq order, so a seq finds its message in O(1).
public struct Room: Sendable {
    /// `messages[i].seq == i + 1`.
    public private(set) var messages: [Message] = []
    /// The next seq to hand out (it runs ahead of `messages` while appends wait for the log).
    var nextSeq: UInt64 = 1

    /// The seq of the newest applied message, 0 when none.
    public var lastSeq: UInt64 { UInt64(self.messages.count) }

    mutating func apply(_ message: Message) throws {
        guard message.seq == UInt64(self.messages.count) + 1 else {
            throw RecordDecodingError.invalidValue("message seq \(message.seq) after \(self.messages.count)")
        }
        self.messages.append(message)
        if self.nextSeq <= message.seq { self.nextSeq = message.seq + 1 }
    }

    /// The messages of a HISTORY query, oldest first.
    /// - Parameters:
    ///   - after: only seqs greater than this; the first `limit` of them.
    ///   - before: only seqs smaller than this; the last `limit` of them.
    ///   - limit: the most messages returned.
    /// - Complexity: O(limit).
    public func history(after: UInt64?, before: UInt64?, limit: Int) -> ArraySlice<Message> {
        let count = self.messages.count
        guard limit > 0, count > 0 else { return [] }
        if let after {
            let start = Int(min(after, UInt64(count)))
            return self.messages[start..<min(count, start + limit)]
        }
        let end = before.map { Int(min(UInt64(count), $0 == 0 ? 0 : $0 - 1)) } ?? count
        return self.messages[max(0, end - limit)..<end]
    }
}
