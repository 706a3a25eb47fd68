import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// A ``WALFileSystem`` for tests: the real files underneath, plus faults on demand (the Nth
/// call of an operation fails with ENOSPC or EIO), a crash at a step (every change from the Nth
/// on fails, as if the process had died there), and a simulated power cut that forgets every byte
/// and every name that was never synced.
public final class FaultyFileSystem: WALFileSystem {
    /// An operation that can be made to fail.
    public enum Operation: Sendable, Hashable {
        case createSegment
        case createFile
        case write
        case sync
        case syncDirectory
        case rename
        case makeDirectory
        case remove
        case removeDirectory
        case truncate
        case read
    }

    private struct State {
        var countdown: [Operation: (remaining: Int, errno: Int32, times: Int)] = [:]
        var calls: [Operation: Int] = [:]
        /// Changes made so far, and the one from which every change fails (a crash there).
        var changes = 0
        var crashAt: Int?
        var trace: [String] = []
        var paths: [Int32: String] = [:]
        var syncedLength: [String: Int] = [:]
        var unsyncedNames: Set<String> = []
        /// File syncs that returned (``calls(_:)`` counts them as they start).
        var syncsDone = 0
        var syncDelayMicroseconds: UInt32 = 0
    }

    private let state = Mutex(State())
    private let real = POSIXFileSystem()

    /// Creates a file system with no faults.
    public init() {}

    /// Makes the `skip + 1`th next call of `operation` fail with `errno`, and the `times - 1`
    /// calls after it too (until ``clearFaults()``, with `Int.max`).
    public func fail(_ operation: Operation, after skip: Int = 0, errno: Int32 = EIO, times: Int = 1) {
        self.state.withLock { $0.countdown[operation] = (skip, errno, times) }
    }

    /// A crash after `changes` more changes (creations, writes, syncs, renames, removals): that
    /// change and every one after it fails with EIO, so the disk holds what a process killed at
    /// that step would leave (``simulatePowerLoss()`` then drops what was never synced).
    public func crash(afterChanges changes: Int) {
        self.state.withLock { $0.crashAt = $0.changes + changes }
    }

    /// Removes every pending fault and crash: the disk is healthy again.
    public func clearFaults() {
        self.state.withLock {
            $0.countdown = [:]
            $0.crashAt = nil
        }
    }

    /// How many times `operation` was called.
    public func calls(_ operation: Operation) -> Int {
        self.state.withLock { $0.calls[operation] ?? 0 }
    }

    /// How many changes were made (or tried) so far.
    public var changes: Int { self.state.withLock { $0.changes } }

    /// Every change made or tried so far, as `operation path`, oldest first.
    public var trace: [String] { self.state.withLock { $0.trace } }

    private func check(_ operation: Operation, path: String) throws {
        let failure: Int32? = self.state.withLock { state in
            state.calls[operation, default: 0] += 1
            if operation != .read {
                state.trace.append("\(operation) \(path)")
                state.changes += 1
                if let crashAt = state.crashAt, state.changes > crashAt { return EIO }
            }
            guard let pending = state.countdown[operation] else { return nil }
            if pending.remaining > 0 {
                state.countdown[operation] = (pending.remaining - 1, pending.errno, pending.times)
                return nil
            }
            state.countdown[operation] = pending.times > 1 ? (0, pending.errno, pending.times - 1) : nil
            return pending.errno
        }
        if let failure { throw WALError.io("\(operation) (injected)", path: path, errno: failure) }
    }

    private func track(_ fd: Int32, path: String) {
        self.state.withLock { state in
            state.paths[fd] = path
            state.syncedLength[path] = 0
            state.unsyncedNames.insert(path)
        }
    }

    public func createSegment(_ path: String) throws -> Int32 {
        try self.check(.createSegment, path: path)
        let fd = try self.real.createSegment(path)
        self.track(fd, path: path)
        return fd
    }

    public func createFile(_ path: String) throws -> Int32 {
        try self.check(.createFile, path: path)
        let fd = try self.real.createFile(path)
        self.track(fd, path: path)
        return fd
    }

    public func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        try self.check(.write, path: path)
        try self.real.write(fd, bytes, path: path)
    }

    /// Makes every file sync take this long more (a slow disk: an fdatasync is milliseconds).
    public func delaySyncs(byMicroseconds delay: UInt32) {
        self.state.withLock { $0.syncDelayMicroseconds = delay }
    }

    public func sync(_ fd: Int32, path: String) throws {
        try self.check(.sync, path: path)
        let delay = self.state.withLock { $0.syncDelayMicroseconds }
        if delay > 0 { usleep(delay) }
        try self.real.sync(fd, path: path)
        let size = (try? POSIXFile.fileSize(path)) ?? 0
        self.state.withLock {
            $0.syncedLength[path] = size
            $0.syncsDone += 1
        }
    }

    /// Bytes written to files this layer created that a power cut would now drop: zero once a
    /// sync has covered everything written so far.
    public var unsyncedBytes: Int {
        let lengths = self.state.withLock { $0.syncedLength }
        return lengths.reduce(0) { total, entry in
            guard POSIXFile.exists(entry.key), !POSIXFile.isDirectory(entry.key) else { return total }
            let size = (try? POSIXFile.fileSize(entry.key)) ?? 0
            return total + max(0, size - entry.value)
        }
    }

    /// File syncs that returned successfully (what a power cut then keeps is decided).
    public var completedSyncs: Int { self.state.withLock { $0.syncsDone } }

    /// A sync of the whole file system: fails as a ``Operation/sync`` does; once it succeeded,
    /// every file written so far keeps its bytes through a power cut.
    public func openFileSystemHandle(_ path: String) throws -> Int32 {
        try self.real.openFileSystemHandle(path)
    }

    public func syncFileSystem(handle: Int32, path: String) throws -> Bool {
        try self.check(.sync, path: path)
        guard try self.real.syncFileSystem(handle: handle, path: path) else { return false }
        self.state.withLock { state in
            for file in state.syncedLength.keys {
                state.syncedLength[file] = (try? POSIXFile.fileSize(file)) ?? state.syncedLength[file]
            }
        }
        return true
    }

    public func deviceID(_ path: String) throws -> UInt64 {
        try self.real.deviceID(path)
    }

    public func close(_ fd: Int32, path: String) {
        self.real.close(fd, path: path)
        _ = self.state.withLock { $0.paths.removeValue(forKey: fd) }
    }

    public func syncDirectory(_ path: String) throws {
        try self.check(.syncDirectory, path: path)
        try self.real.syncDirectory(path)
        self.state.withLock { state in
            state.unsyncedNames = state.unsyncedNames.filter { POSIXFile.parent(of: $0) != path }
        }
    }

    public func rename(_ from: String, to: String) throws {
        try self.check(.rename, path: from)
        try self.real.rename(from, to: to)
        self.state.withLock { state in
            // What was tracked under the old name (a file, or the files of a directory) moves.
            for (path, length) in state.syncedLength where path == from || path.hasPrefix(from + "/") {
                state.syncedLength[path] = nil
                state.syncedLength[to + path.dropFirst(from.count)] = length
            }
            state.unsyncedNames = Set(
                state.unsyncedNames.map { $0 == from || $0.hasPrefix(from + "/") ? to + $0.dropFirst(from.count) : $0 }
            )
            state.unsyncedNames.insert(to)
        }
    }

    public func makeDirectory(_ path: String) throws -> Bool {
        try self.check(.makeDirectory, path: path)
        let made = try self.real.makeDirectory(path)
        if made { _ = self.state.withLock { $0.unsyncedNames.insert(path) } }
        return made
    }

    public func remove(_ path: String) throws {
        try self.check(.remove, path: path)
        try self.real.remove(path)
    }

    public func removeDirectory(_ path: String) throws {
        try self.check(.removeDirectory, path: path)
        try self.real.removeDirectory(path)
    }

    public func truncate(_ path: String, to length: Int) throws {
        try self.check(.truncate, path: path)
        try self.real.truncate(path, to: length)
    }

    public func openForReading(_ path: String) throws -> Int32 {
        try self.check(.read, path: path)
        return try self.real.openForReading(path)
    }

    public func read(
        _ fd: Int32,
        into buffer: UnsafeMutableRawBufferPointer,
        at offset: Int,
        path: String
    ) throws -> Int {
        try self.check(.read, path: path)
        return try self.real.read(fd, into: buffer, at: offset, path: path)
    }

    public func readFile(_ path: String) throws -> [UInt8] {
        try self.check(.read, path: path)
        return try self.real.readFile(path)
    }

    public func listDirectory(_ path: String) throws -> [String] {
        try self.real.listDirectory(path)
    }

    public func listDirectoryEntries(_ path: String) throws -> [(name: String, isDirectory: Bool)] {
        try self.real.listDirectoryEntries(path)
    }

    public func fileSize(_ path: String) throws -> Int {
        try self.real.fileSize(path)
    }

    public func isDirectory(_ path: String) -> Bool {
        self.real.isDirectory(path)
    }

    public func exists(_ path: String) -> Bool {
        self.real.exists(path)
    }

    /// A power cut: every file this layer created loses what was written after its last sync,
    /// and a name that was never made durable (no sync of its directory after it was created or
    /// renamed) disappears with what it holds. Call it once the writers using this layer are gone.
    public func simulatePowerLoss() throws {
        let (lengths, unsynced) = self.state.withLock { ($0.syncedLength, $0.unsyncedNames) }
        for (path, length) in lengths where POSIXFile.exists(path) && !POSIXFile.isDirectory(path) {
            try POSIXFile.truncate(path, to: length)
        }
        // Outermost first: a lost directory takes everything in it.
        for path in unsynced.sorted(by: { $0.count < $1.count }) where POSIXFile.exists(path) {
            try self.real.removeTree(path)
        }
        self.state.withLock { $0 = State() }
    }
}
