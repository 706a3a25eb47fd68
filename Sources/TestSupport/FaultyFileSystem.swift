import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// A ``WALFileSystem`` for tests: the real files underneath, plus faults on demand (the Nth
/// write, sync or segment creation fails with ENOSPC or EIO) and a simulated power cut that
/// forgets every byte and every name that was never synced.
public final class FaultyFileSystem: WALFileSystem {
    /// An operation that can be made to fail.
    public enum Operation: Sendable, Hashable {
        case createSegment
        case write
        case sync
        case syncDirectory
        case rename
    }

    private struct State {
        var countdown: [Operation: (remaining: Int, errno: Int32, times: Int)] = [:]
        var calls: [Operation: Int] = [:]
        var paths: [Int32: String] = [:]
        var syncedLength: [String: Int] = [:]
        var unsyncedNames: Set<String> = []
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

    /// Removes every pending fault: the disk is healthy again.
    public func clearFaults() {
        self.state.withLock { $0.countdown = [:] }
    }

    /// How many times `operation` was called.
    public func calls(_ operation: Operation) -> Int {
        self.state.withLock { $0.calls[operation] ?? 0 }
    }

    private func check(_ operation: Operation, path: String) throws {
        let failure: Int32? = self.state.withLock { state in
            state.calls[operation, default: 0] += 1
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

    public func createSegment(_ path: String) throws -> Int32 {
        try self.check(.createSegment, path: path)
        let fd = try self.real.createSegment(path)
        self.state.withLock { state in
            state.paths[fd] = path
            state.syncedLength[path] = 0
            state.unsyncedNames.insert(path)
        }
        return fd
    }

    public func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        try self.check(.write, path: path)
        try self.real.write(fd, bytes, path: path)
    }

    public func sync(_ fd: Int32, path: String) throws {
        try self.check(.sync, path: path)
        try self.real.sync(fd, path: path)
        let size = (try? POSIXFile.fileSize(path)) ?? 0
        self.state.withLock { $0.syncedLength[path] = size }
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
    }

    /// A power cut: every file this layer created loses what was written after its last sync,
    /// and a file whose name was never made durable (no directory sync) disappears.
    /// Call it once the writer using this layer is gone.
    public func simulatePowerLoss() throws {
        let (lengths, unsynced) = self.state.withLock { ($0.syncedLength, $0.unsyncedNames) }
        for (path, length) in lengths where POSIXFile.exists(path) {
            if unsynced.contains(path) {
                try POSIXFile.remove(path)
            } else {
                try POSIXFile.truncate(path, to: length)
            }
        }
        self.state.withLock { $0 = State() }
    }
}
