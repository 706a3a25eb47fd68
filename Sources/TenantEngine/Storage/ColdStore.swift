import DequeModule
import LZ4
import Logging
import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The server's memory budget for messages (`--maxmemory`): the bytes of messages held in memory
/// by every tenant, and the shared cache of cold chunks read back.
///
/// Like Redis's `maxmemory`, it bounds the data, not the process: of `--maxmemory`, half goes to
/// messages in memory and a sixteenth to the chunk cache, leaving the rest for everything else
/// (the process itself, about 30 MB; users, room tables, connections, buffers, checkpoints' blocks,
/// the allocator's slack).
public final class MemoryBudget: Sendable {
    /// The message bytes in memory past which tenants move their sealed chunks to disk.
    public let limit: Int
    /// The most bytes the chunk cache holds.
    public let cacheCapacity: Int
    private let used = Atomic<Int>(0)
    private let nextStoreID = Atomic<Int>(0)
    let cache: ChunkCache

    /// A budget of `maxMemory` bytes for the server.
    public init(maxMemory: Int) {
        self.limit = maxMemory / 2
        self.cacheCapacity = max(1 << 20, maxMemory / 16)
        self.cache = ChunkCache(capacity: self.cacheCapacity)
    }

    /// The message bytes in memory now, every tenant together.
    public var residentBytes: Int { self.used.load(ordering: .relaxed) }

    /// The bytes of cold chunks the cache holds now.
    public var cachedBytes: Int { self.cache.bytes }

    /// True while messages in memory take more than the limit.
    var isOver: Bool { self.used.load(ordering: .relaxed) > self.limit }

    func add(_ bytes: Int) {
        self.used.wrappingAdd(bytes, ordering: .relaxed)
    }

    func makeStoreID() -> Int {
        self.nextStoreID.wrappingAdd(1, ordering: .relaxed).newValue
    }

    /// A default for `--maxmemory`: half the machine's memory.
    public static var defaultMaxMemory: Int {
        let pages = sysconf(Int32(_SC_PHYS_PAGES))
        let pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return 1 << 30 }
        let (total, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        return overflow ? Int.max / 2 : total / 2
    }
}

/// A sealed chunk compressed in memory: its columns serialized and lz4-compressed.
struct CompressedChunk: Sendable {
    let store: ColdStore
    /// Its key in the chunk cache, unique in its store (it keeps it when it goes cold).
    let id: Int
    let stored: [UInt8]
    let rawLength: Int
    let authorCount: Int

    init(_ columns: MessageColumns, store: ColdStore) throws {
        let raw = columns.serialized()
        self.store = store
        self.id = store.makeChunkID()
        // Exactly as long as the compressed bytes: lz4's output buffer has room for the worst case.
        let compressed = try LZ4Block.compress(raw)
        self.stored = [UInt8](unsafeUninitializedCapacity: compressed.count) { buffer, count in
            count = buffer.initialize(fromContentsOf: compressed)
        }
        self.rawLength = raw.count
        self.authorCount = Int(columns.authorOf.max().map { $0 + 1 } ?? 0)
    }

    /// The bytes it takes in memory, as the budget counts them (its bytes and the array's header).
    var residentBytes: Int { self.stored.count + 32 }
}

/// A sealed chunk in a cold store: where its compressed columns are, and what they hold.
struct ColdChunk: Sendable {
    let store: ColdStore
    let id: Int
    let offset: Int
    let storedLength: Int
    let rawLength: Int
    let authorCount: Int
    /// The CRC-32C of the stored bytes: a chunk read back altered is an error (IOERR), never
    /// altered text.
    let crc: UInt32
}

/// One tenant's cold store: its sealed chunks moved out of memory, each lz4-compressed, in one
/// file of the data directory's file system that is unlinked as soon as it is open. It is a cache
/// of what the tenant's log and checkpoints hold, never a source of truth: it has no name, is
/// never synced, and is gone when the tenant closes or the process dies; recovery builds the rooms
/// again from the log and moves chunks out again as the budget asks. It also keeps the tenant's
/// count of message bytes in memory and the order its sealed chunks go out in (oldest first).
final class ColdStore: Sendable {
    let budget: MemoryBudget
    let id: Int
    private let directory: String
    private let logger: Logger?
    private struct State: ~Copyable {
        var fd: Int32 = -1
        var end = 0
        var nextChunkID = 0
        var resident = 0
        var evictable: Deque<(room: String, chunk: Int)> = []
        var failed = false
    }
    private let state = Mutex(State())

    /// A store whose file, made on first use, lives in `directory`.
    init(budget: MemoryBudget, directory: String, logger: Logger?) {
        self.budget = budget
        self.id = budget.makeStoreID()
        self.directory = directory
        self.logger = logger
    }

    deinit {
        let (fd, resident) = self.state.withLock { ($0.fd, $0.resident) }
        self.budget.add(-resident)
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    /// The tenant's message bytes in memory.
    var residentBytes: Int { self.state.withLock { $0.resident } }

    /// The tenant's rooms took `bytes` more (or fewer, when negative).
    func added(_ bytes: Int) {
        guard bytes != 0 else { return }
        self.state.withLock { $0.resident += bytes }
        self.budget.add(bytes)
    }

    /// Chunk `chunk` of `room` is sealed: it may go out once the older ones have.
    func sealed(room: String, chunk: Int) {
        self.state.withLock { $0.evictable.append((room, chunk)) }
    }

    /// The next sealed chunk to move out while the server is over its budget, oldest first.
    func nextToEvict() -> (room: String, chunk: Int)? {
        guard self.budget.isOver else { return nil }
        return self.state.withLock { state in
            state.failed ? nil : state.evictable.popFirst()
        }
    }

    /// The tenant closed: its rooms no longer count in the budget and nothing more moves out. The
    /// file stays open until the last chunk that refers to it goes (a checkpoint may still read).
    func release() {
        let resident = self.state.withLock { state in
            defer {
                state.resident = 0
                state.evictable.removeAll()
                state.failed = true
            }
            return state.resident
        }
        self.budget.add(-resident)
    }

    /// A key for a chunk sealed in this store, unique in it.
    func makeChunkID() -> Int {
        self.state.withLock { state in
            state.nextChunkID += 1
            return state.nextChunkID
        }
    }

    /// Takes over rooms recovered without a store: counts their bytes and queues their sealed chunks.
    func adopt(_ rooms: [String: Room]) {
        var total = 0
        var queue: [(room: String, chunk: Int)] = []
        for (name, room) in rooms {
            total += room.residentBytes
            for index in 0..<max(0, room.chunkCount - 1) { queue.append((name, index)) }
        }
        self.added(total)
        self.state.withLock { state in
            for entry in queue { state.evictable.append(entry) }
        }
    }

    /// Appends a compressed chunk to the file.
    /// - Throws: when the file cannot be made or written; the chunk stays in memory then, and the
    ///   store stops moving chunks out (the budget is exceeded rather than the server failing).
    func write(_ chunk: CompressedChunk) throws -> ColdChunk {
        try self.state.withLock { state in
            do {
                if state.fd < 0 { state.fd = try self.makeFile() }
                var written = 0
                while written < chunk.stored.count {
                    let result = chunk.stored.withUnsafeBytes { bytes in
                        pwrite(
                            state.fd,
                            bytes.baseAddress! + written,
                            bytes.count - written,
                            off_t(state.end + written)
                        )
                    }
                    if result < 0 {
                        if errno == EINTR { continue }
                        throw ColdStoreError("cold store write failed: errno \(errno)")
                    }
                    written += result
                }
            } catch {
                if !state.failed {
                    self.logger?.error("messages stay in memory, over the memory budget: \(error)")
                }
                state.failed = true
                throw error
            }
            let cold = ColdChunk(
                store: self,
                id: chunk.id,
                offset: state.end,
                storedLength: chunk.stored.count,
                rawLength: chunk.rawLength,
                authorCount: chunk.authorCount,
                crc: chunk.stored.withUnsafeBytes { CRC32C.checksum($0) }
            )
            state.end += chunk.stored.count
            return cold
        }
    }

    /// A compressed chunk's columns, from the cache or decompressed.
    func columns(of chunk: CompressedChunk, cached: Bool) throws -> MessageColumns {
        let key = ChunkCache.Key(store: self.id, chunk: chunk.id)
        if let hit = self.budget.cache.get(key) { return hit }
        let columns = try Self.decode(chunk.stored, rawLength: chunk.rawLength, authorCount: chunk.authorCount)
        if cached { self.budget.cache.put(key, columns) }
        return columns
    }

    /// A cold chunk's columns, from the cache or read and decompressed.
    func read(_ chunk: ColdChunk, cached: Bool) throws -> MessageColumns {
        let key = ChunkCache.Key(store: self.id, chunk: chunk.id)
        if let hit = self.budget.cache.get(key) { return hit }
        let fd = self.state.withLock { $0.fd }
        var stored = [UInt8](repeating: 0, count: chunk.storedLength)
        var done = 0
        while done < stored.count {
            let result = stored.withUnsafeMutableBytes { bytes in
                pread(fd, bytes.baseAddress! + done, bytes.count - done, off_t(chunk.offset + done))
            }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw ColdStoreError("cold store read failed: errno \(errno)") }
            done += result
        }
        guard stored.withUnsafeBytes({ CRC32C.checksum($0) }) == chunk.crc else {
            throw ColdStoreError("cold chunk \(chunk.id) at offset \(chunk.offset) is damaged (CRC-32C mismatch)")
        }
        let columns = try Self.decode(stored, rawLength: chunk.rawLength, authorCount: chunk.authorCount)
        if cached { self.budget.cache.put(key, columns) }
        return columns
    }

    private static func decode(_ stored: [UInt8], rawLength: Int, authorCount: Int) throws -> MessageColumns {
        let raw = try LZ4Block.decompress(stored, decodedSize: rawLength, maxDecodedSize: rawLength)
        return try raw.withUnsafeBytes { try MessageColumns.deserialize($0, authorCount: authorCount) }
    }

    private func makeFile() throws -> Int32 {
        // A unique name, unlinked at once: the file lives as long as its descriptor.
        for attempt in 0..<16 {
            let path = "\(self.directory)/.cold-\(getpid())-\(self.id)-\(attempt)"
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 {
                unlink(path)
                return fd
            }
            guard errno == EEXIST else { break }
        }
        throw ColdStoreError("cannot make a cold store file in \(self.directory): errno \(errno)")
    }
}

struct ColdStoreError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The cold chunks read back lately, every tenant's, up to a byte capacity; the least recently
/// used go first.
final class ChunkCache: Sendable {
    struct Key: Hashable, Sendable {
        var store: Int
        var chunk: Int
    }
    private struct Entry {
        var columns: MessageColumns
        var lastUse: UInt64
    }
    private struct State: ~Copyable {
        var entries: [Key: Entry] = [:]
        var bytes = 0
        var clock: UInt64 = 0
    }
    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        self.capacity = capacity
    }

    var bytes: Int { self.state.withLock { $0.bytes } }

    func get(_ key: Key) -> MessageColumns? {
        self.state.withLock { state in
            guard state.entries[key] != nil else { return nil }
            state.clock += 1
            state.entries[key]!.lastUse = state.clock
            return state.entries[key]!.columns
        }
    }

    func put(_ key: Key, _ columns: MessageColumns) {
        let size = columns.residentBytes
        guard size <= self.capacity / 4 else { return }
        self.state.withLock { state in
            guard state.entries[key] == nil else { return }
            state.clock += 1
            state.entries[key] = Entry(columns: columns, lastUse: state.clock)
            state.bytes += size
            guard state.bytes > self.capacity else { return }
            // Over capacity: drop the least recently used quarter at once (one sort for many puts).
            let byAge = state.entries.sorted { $0.value.lastUse < $1.value.lastUse }
            var index = 0
            while index < byAge.count && (state.bytes > self.capacity * 3 / 4 || index == 0) {
                state.bytes -= byAge[index].value.columns.residentBytes
                state.entries[byAge[index].key] = nil
                index += 1
            }
        }
    }
}

extension ColdStore {
    /// After one of `rooms` took a message: counts its bytes, queues the chunk it sealed, and
    /// while the server is over its budget moves this tenant's oldest sealed chunks out.
    func took(_ result: (addedBytes: Int, sealedChunk: Int?), room: String, rooms: inout [String: Room]) {
        var added = result.addedBytes
        if let chunk = result.sealedChunk {
            // Compressed at once (lz4 does a 32 KiB chunk in tens of microseconds); if lz4 fails,
            // which it does not for a chunk this size, the columns stay as they are.
            added -= (try? rooms[room]?.compress(chunk: chunk, store: self)) ?? 0
            self.sealed(room: room, chunk: chunk)
        }
        self.added(added)
        while let next = self.nextToEvict() {
            // A failed write leaves the chunk in memory and stops further moves (logged once).
            guard let freed = try? rooms[next.room]?.evict(chunk: next.chunk, to: self) else { return }
            self.added(-freed)
        }
    }
}
