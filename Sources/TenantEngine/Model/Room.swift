import Synchronization

/// One room: its messages in seq order, kept in chunks of columns rather than as ``Message``
/// values, so that the older ones can leave memory.
///
/// A chunk is a run of consecutive messages: their texts back to back in one byte array with the
/// end of each, their times, and for each an index into the room's table of distinct authors; the
/// seq is the position. A message costs its text plus 16 bytes. The newest chunk (the tail) takes
/// new messages; once it holds ``chunkTextBytes`` of text or ``chunkMessages`` messages it is
/// sealed. Under a memory budget a sealed chunk is lz4-compressed at once and stays in memory so
/// (a chat message then costs about half its text), until the server is over its budget, when its
/// tenant moves it to its cold store on disk. Both are read back through the shared chunk cache
/// when a HISTORY or a checkpoint needs them. A message is made into a ``Message`` when it is
/// read, `seq` by `seq`: message `i` has seq `i + 1`.
public struct Room: Sendable {

    /// Sealed chunks, each in a box shared by every copy of the room: a checkpoint's copy sees a
    /// chunk leave memory when the live room moves it out, and never pins it there.
    private var sealed: [ChunkBox] = []
    /// The number of messages up to and including sealed chunk `i`.
    private var sealedEnds: [Int] = []
    private var tail = MessageColumns()
    /// Message `i`'s author is `authors[authorOf[i]]`, in order of first appearance.
    private(set) var authors: [String] = []
    private var authorIndex: [String: UInt32] = [:]
    /// The next seq to hand out (it runs ahead of the messages while appends wait for the log).
    var nextSeq: UInt64 = 1
    /// The text bytes the room holds, in memory or cold.
    public private(set) var textBytes = 0

    /// Creates an empty room.
    public init() {}

    /// How many messages the room holds.
    public var count: Int { (self.sealedEnds.last ?? 0) + self.tail.count }

    /// The seq of the newest applied message, 0 when none.
    public var lastSeq: UInt64 { UInt64(self.count) }

    /// How many chunks the room has (the tail counts when it holds a message).
    var chunkCount: Int { self.sealed.count + (self.tail.count > 0 ? 1 : 0) }

    /// How many sealed chunks are cold.
    var coldChunkCount: Int {
        self.sealed.reduce(0) { count, chunk in
            if case .cold = chunk.state { return count + 1 }
            return count
        }
    }

    /// True when chunk `index` is in the cold store.
    func isCold(chunk index: Int) -> Bool {
        guard index < self.sealed.count, case .cold = self.sealed[index].state else { return false }
        return true
    }

    /// How many sealed chunks are compressed in memory.
    var compressedChunkCount: Int {
        self.sealed.reduce(0) { count, chunk in
            if case .compressed = chunk.state { return count + 1 }
            return count
        }
    }

    /// The bytes of the room in memory, as the budget counts them.
    var residentBytes: Int {
        self.sealed.reduce(self.tail.residentBytes) { total, chunk in total + chunk.state.residentBytes }
    }

    /// Appends a message (the next seq).
    /// - Returns: the bytes it added to memory, and the index of the chunk it sealed, if any.
    /// - Throws: when the seq does not follow the room's last.
    @discardableResult
    mutating func apply(_ message: Message) throws -> (addedBytes: Int, sealedChunk: Int?) {
        guard message.seq == UInt64(self.count) + 1 else {
            throw RecordDecodingError.invalidValue("message seq \(message.seq) after \(self.count)")
        }
        let author: UInt32
        if let known = self.authorIndex[message.user] {
            author = known
        } else {
            author = UInt32(self.authors.count)
            self.authors.append(message.user)
            self.authorIndex[message.user] = author
        }
        let before = self.tail.residentBytes
        self.tail.append(message.text, timestamp: message.timestamp, author: author)
        self.textBytes += message.text.utf8.count
        if self.nextSeq <= message.seq { self.nextSeq = message.seq + 1 }
        let added = self.tail.residentBytes - before
        guard
            self.tail.texts.count >= EngineLimits.roomChunkTextBytes
                || self.tail.count >= EngineLimits.roomChunkMessages
        else {
            return (added, nil)
        }
        self.sealed.append(ChunkBox(.resident(self.tail)))
        self.sealedEnds.append(self.count)
        self.tail = MessageColumns()
        return (added, self.sealed.count - 1)
    }

    /// Compresses sealed chunk `index` in memory, if it is not already.
    /// - Returns: the bytes it freed.
    func compress(chunk index: Int, store: ColdStore) throws -> Int {
        guard index < self.sealed.count else { return 0 }
        return try self.sealed[index].compress(store: store)
    }

    /// Moves sealed chunk `index` to `store`, if it is in memory.
    /// - Returns: the bytes it freed.
    func evict(chunk index: Int, to store: ColdStore) throws -> Int {
        guard index < self.sealed.count else { return 0 }
        return try self.sealed[index].evict(to: store)
    }

    /// Chunk `index`'s columns, decompressed or read back from the cold store when it is there.
    /// - Parameter cached: read through (and into) the shared chunk cache; a checkpoint reading
    ///   every chunk once does not.
    func columns(ofChunk index: Int, cached: Bool = true) throws -> MessageColumns {
        guard index < self.sealed.count else { return self.tail }
        switch self.sealed[index].state {
        case .resident(let columns): return columns
        case .compressed(let chunk): return try chunk.store.columns(of: chunk, cached: cached)
        case .cold(let cold): return try cold.store.read(cold, cached: cached)
        }
    }

    /// The index of the chunk holding message `index`, and the index of that chunk's first message.
    private func chunk(holding index: Int) -> (chunk: Int, first: Int) {
        var low = 0
        var high = self.sealedEnds.count
        while low < high {
            let middle = (low + high) / 2
            if self.sealedEnds[middle] <= index { low = middle + 1 } else { high = middle }
        }
        return (low, low == 0 ? 0 : self.sealedEnds[low - 1])
    }

    /// Calls `body` with each chunk's columns in seq order (cold ones read once, not cached).
    func forEachChunk(_ body: (MessageColumns) throws -> Void) throws {
        for index in 0..<self.chunkCount { try body(try self.columns(ofChunk: index, cached: false)) }
    }

    /// The messages at `range` (message indexes), oldest first.
    func messages(in range: Range<Int>) throws -> [Message] {
        try self.page(in: range).messages
    }

    /// The messages at `range` (message indexes), oldest first, as a page: texts copied into
    /// one array, no `String` made per message.
    func page(in range: Range<Int>, textBytes: Int = 0) throws -> MessagePage {
        var page = MessagePage()
        page.firstSeq = UInt64(range.lowerBound + 1)
        page.texts.reserveCapacity(textBytes)
        page.timestamps.reserveCapacity(range.count)
        page.users.reserveCapacity(range.count)
        page.ends.reserveCapacity(range.count)
        var next = range.lowerBound
        while next < range.upperBound {
            let (chunk, first) = self.chunk(holding: next)
            let columns = try self.columns(ofChunk: chunk)
            let end = min(range.upperBound, first + columns.count)
            for index in next..<end {
                let local = index - first
                page.timestamps.append(columns.timestamps[local])
                page.users.append(self.authors[Int(columns.authorOf[local])])
                page.texts.append(contentsOf: columns.text(at: local))
                page.ends.append(page.texts.count)
            }
            next = end
        }
        return page
    }

    /// Every message, oldest first.
    public func allMessages() throws -> [Message] {
        try self.messages(in: 0..<self.count)
    }

    /// The messages of a HISTORY query, oldest first.
    /// - Parameters:
    ///   - after: only seqs greater than this; the first `limit` of them.
    ///   - before: only seqs smaller than this; the last `limit` of them.
    ///   - limit: the most messages returned.
    /// - Complexity: O(limit), plus a read of each cold chunk the page touches that is not cached.
    public func history(after: UInt64?, before: UInt64?, limit: Int) throws -> [Message] {
        try self.historyPage(after: after, before: before, limit: limit).messages
    }

    /// The messages of a HISTORY query, oldest first, as a page (see ``history(after:before:limit:)``),
    /// cut to the longest run from the end it keeps (the oldest with `after`, else the newest) whose
    /// texts fit `maxTextBytes`, one message at least. Only that run's texts are copied.
    public func historyPage(
        after: UInt64?,
        before: UInt64?,
        limit: Int,
        maxTextBytes: Int = .max
    ) throws -> MessagePage {
        let count = self.count
        guard limit > 0, count > 0 else { return MessagePage() }
        let range: Range<Int>
        if let after {
            let start = Int(min(after, UInt64(count)))
            range = start..<min(count, start + limit)
        } else {
            let end = before.map { Int(min(UInt64(count), $0 == 0 ? 0 : $0 - 1)) } ?? count
            range = max(0, end - limit)..<end
        }
        let (kept, textBytes) = try self.fitting(range, keepingOldest: after != nil, maxTextBytes: maxTextBytes)
        return try self.page(in: kept, textBytes: textBytes)
    }

    /// The longest run of `range` from the end it keeps whose texts fit `maxTextBytes` (one
    /// message at least), and its text bytes: counted from the columns' ends, nothing copied.
    private func fitting(
        _ range: Range<Int>,
        keepingOldest: Bool,
        maxTextBytes: Int
    ) throws -> (Range<Int>, Int) {
        var total = 0
        if keepingOldest {
            var index = range.lowerBound
            while index < range.upperBound {
                let (chunk, first) = self.chunk(holding: index)
                let columns = try self.columns(ofChunk: chunk)
                let end = min(range.upperBound, first + columns.count)
                for message in index..<end {
                    let length = columns.textLength(at: message - first)
                    if message > range.lowerBound && total + length > maxTextBytes {
                        return (range.lowerBound..<message, total)
                    }
                    total += length
                }
                index = end
            }
        } else {
            var index = range.upperBound
            while index > range.lowerBound {
                let (chunk, first) = self.chunk(holding: index - 1)
                let columns = try self.columns(ofChunk: chunk)
                let start = max(range.lowerBound, first)
                for message in (start..<index).reversed() {
                    let length = columns.textLength(at: message - first)
                    if message < range.upperBound - 1 && total + length > maxTextBytes {
                        return (message + 1..<range.upperBound, total)
                    }
                    total += length
                }
                index = start
            }
        }
        return (range, total)
    }
}

/// A sealed chunk, shared by every copy of its room. Its messages never change; where they are
/// does (in memory as columns, compressed, or cold), and every copy sees the move at once.
final class ChunkBox: Sendable {
    private let storage: Mutex<SealedChunk>

    init(_ chunk: SealedChunk) {
        self.storage = Mutex(chunk)
    }

    /// Where the chunk is now.
    var state: SealedChunk { self.storage.withLock { $0 } }

    /// Compresses the chunk in memory if it is columns. - Returns: the bytes freed.
    func compress(store: ColdStore) throws -> Int {
        try self.storage.withLock { chunk in
            guard case .resident(let columns) = chunk else { return 0 }
            let compressed = try CompressedChunk(columns, store: store)
            chunk = .compressed(compressed)
            return columns.residentBytes - compressed.residentBytes
        }
    }

    /// Moves the chunk to the cold store if it is in memory. - Returns: the bytes freed.
    func evict(to store: ColdStore) throws -> Int {
        try self.storage.withLock { chunk in
            let compressed: CompressedChunk
            switch chunk {
            case .cold: return 0
            case .compressed(let inMemory): compressed = inMemory
            case .resident(let columns): compressed = try CompressedChunk(columns, store: store)
            }
            let freed = chunk.residentBytes
            chunk = .cold(try store.write(compressed))
            return freed
        }
    }
}

/// Where a sealed chunk is: in memory as columns (no budget) or compressed, or in its tenant's
/// cold store.
enum SealedChunk: Sendable {
    case resident(MessageColumns)
    case compressed(CompressedChunk)
    case cold(ColdChunk)

    /// The bytes it takes in memory, as the budget counts them.
    var residentBytes: Int {
        switch self {
        case .resident(let columns): columns.residentBytes
        case .compressed(let chunk): chunk.residentBytes
        case .cold: 0
        }
    }
}

/// A run of consecutive messages of one room, column by column.
struct MessageColumns: Sendable {
    /// Every message's text, UTF-8, back to back.
    var texts: [UInt8] = []
    /// Message `i`'s text ends at `ends[i]` in `texts` and starts where the one before it ends.
    var ends: [UInt32] = []
    var timestamps: [Int64] = []
    /// Message `i`'s author, an index into its room's author table.
    var authorOf: [UInt32] = []

    var count: Int { self.ends.count }

    /// The memory the budget counts for these messages: their texts and 16 bytes each.
    var residentBytes: Int { self.texts.count + 16 * self.ends.count }

    /// The length of message `index`'s text.
    func textLength(at index: Int) -> Int {
        Int(self.ends[index]) - (index == 0 ? 0 : Int(self.ends[index - 1]))
    }

    /// Message `index`'s text.
    func text(at index: Int) -> ArraySlice<UInt8> {
        self.texts[(index == 0 ? 0 : Int(self.ends[index - 1]))..<Int(self.ends[index])]
    }

    mutating func append(_ text: String, timestamp: Int64, author: UInt32) {
        var text = text
        text.withUTF8 { self.texts.append(contentsOf: $0) }
        self.ends.append(UInt32(self.texts.count))
        self.timestamps.append(timestamp)
        self.authorOf.append(author)
    }

    /// The columns as the cold store keeps them (before compression): the count, the times as
    /// deltas, the author indexes, the text lengths, then the texts.
    func serialized() -> [UInt8] {
        var writer = BinaryWriter(capacity: self.texts.count + 8 * self.count + 16)
        writer.writeVarint(UInt64(self.count))
        var previous: Int64 = 0
        for timestamp in self.timestamps {
            writer.writeSignedVarint(timestamp &- previous)
            previous = timestamp
        }
        for author in self.authorOf { writer.writeVarint(UInt64(author)) }
        var start: UInt32 = 0
        for end in self.ends {
            writer.writeVarint(UInt64(end - start))
            start = end
        }
        writer.bytes.append(contentsOf: self.texts)
        return writer.bytes
    }

    /// Columns from ``serialized()``'s bytes, every count and index checked.
    /// - Parameter authorCount: the size of the room's author table.
    static func deserialize(_ bytes: UnsafeRawBufferPointer, authorCount: Int) throws -> MessageColumns {
        var reader = BinaryReader(bytes)
        let count = try reader.readCount(minimumSize: 3, "chunk message count")
        var columns = MessageColumns()
        columns.timestamps.reserveCapacity(count)
        columns.authorOf.reserveCapacity(count)
        columns.ends.reserveCapacity(count)
        var previous: Int64 = 0
        for _ in 0..<count {
            previous = previous &+ (try reader.readSignedVarint())
            columns.timestamps.append(previous)
        }
        for _ in 0..<count {
            let author = try reader.readVarint()
            guard author < UInt64(authorCount) else { throw RecordDecodingError.invalidValue("chunk author") }
            columns.authorOf.append(UInt32(author))
        }
        var end = 0
        for _ in 0..<count {
            let length = try reader.readCount(minimumSize: 1, "chunk text length")
            end += length
            guard end <= UInt32.max else { throw RecordDecodingError.invalidValue("chunk text length") }
            columns.ends.append(UInt32(end))
        }
        guard bytes.count - reader.offset == end else { throw RecordDecodingError.invalidValue("chunk texts") }
        columns.texts = Array(bytes[reader.offset...])
        return columns
    }
}
