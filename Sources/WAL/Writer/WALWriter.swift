import Dispatch
import LZ4
import Synchronization
import TenantMetrics

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Appends records to a log directory, with group commit.
///
/// ``append(type:payload:)`` frames and compresses a record into an in-memory batch at once and
/// returns its lsn; ``waitUntilDurable(_:)`` suspends until the batch holding it has been written
/// (and, under ``FsyncPolicy/always``, fdatasync'd). One flush at a time runs on the writer's serial
/// queue, off every event loop and actor, and takes everything appended meanwhile: one write(2) and
/// one fdatasync for all the records that arrived while the previous flush ran.
///
/// A failed write or sync fails every waiter and every later append: nothing after it is acknowledged.
///
/// An event loop that appended records may also write them itself, at the end of its turn, with
/// ``writeOnCaller()`` (Redis writes its AOF so, once per event-loop turn): one write(2), no hop
/// to the queue and back. It does so only when no flush holds the segment and none is needed
/// that would block (a new segment, or an fdatasync under `always`); otherwise the caller waits
/// for the queue's flush with ``whenDurable(_:_:)``.
///
/// `@unchecked Sendable`: `state` and `io` are `Mutex`es; every write, sync and segment change
/// holds `io`, so the queue's flushes, the callers' and the `everysec` timer's exclude each other.
public final class WALWriter: @unchecked Sendable {
    /// Someone waiting for an lsn to be durable: a task, or a callback (an event loop's turn).
    enum Waiter {
        case task(CheckedContinuation<Void, any Error>)
        case callback(@Sendable (WALError?) -> Void)

        func resume(_ error: WALError?) {
            switch self {
            case .task(let continuation):
                if let error { continuation.resume(throwing: error) } else { continuation.resume() }
            case .callback(let callback):
                callback(error)
            }
        }
    }

    /// The open segment, touched only under `io`.
    struct IO {
        var fd: Int32 = -1
        var segmentPath = ""
        var unsynced = false
        /// The delay before the next retry of a batch a transient fault held back.
        var retryDelay = 0.0
    }

    struct Chunk {
        var newSegment: UInt64?
        var bytes: [UInt8]
    }

    struct State {
        var compressor: LZ4StreamCompressor
        var nextLSN: UInt64
        var durableLSN: UInt64
        var pending: [Chunk] = []
        var segmentBytes = 0
        var hasSegment = false
        var flushing = false
        var waiters: [(lsn: UInt64, waiter: Waiter)] = []
        var failure: WALError?
        var closed = false
        var rollRequested = false
        /// Bytes queued in `pending`, for the bound that holds during a shortage.
        var pendingBytes = 0
        /// Set while a shortage (EMFILE, ENFILE, ENOMEM opening a segment) holds writes back.
        var shortage: WALError?
    }

    /// The log's directory (it changes when the log is moved, see ``moved(from:to:)``).
    public var directory: String { self.location.withLock { $0 } }
    let location: Mutex<String>
    /// The device holding the log (nil when it could not be told), for the `everysec` timer's
    /// one sync per file system.
    let device: UInt64?
    /// The log's settings.
    public let configuration: WALConfiguration
    let state: Mutex<State>
    let queue: DispatchQueue
    let syncScheduler: WALSyncScheduler
    let fileSystem: any WALFileSystem
    let io = Mutex(IO())

    /// Opens a writer that appends after `lastLSN`, in a new segment created on the first append.
    /// - Parameters:
    ///   - directory: the log directory, created (and its parent fsynced) when missing.
    ///   - lastLSN: the lsn of the last record already in the log (0 for none).
    ///   - configuration: the fsync policy and sizes.
    ///   - syncScheduler: the timer that syncs `everysec` logs.
    ///   - fileSystem: the file operations (a fault-injecting layer in tests).
    /// - Throws: ``WALError`` when the directory cannot be made.
    public init(
        directory: String,
        lastLSN: UInt64,
        configuration: WALConfiguration,
        syncScheduler: WALSyncScheduler = .shared,
        fileSystem: any WALFileSystem = POSIXFileSystem()
    ) throws {
        self.location = Mutex(directory)
        self.configuration = configuration
        self.syncScheduler = syncScheduler
        self.fileSystem = fileSystem
        if try fileSystem.makeDirectory(directory) {
            try fileSystem.syncDirectory(POSIXFile.parent(of: directory))
        }
        self.device = try? fileSystem.deviceID(directory)
        let compressor = LZ4StreamCompressor(maxBlockSize: configuration.maxRecordSize)
        self.state = Mutex(State(compressor: compressor, nextLSN: lastLSN + 1, durableLSN: lastLSN))
        self.queue = DispatchQueue(label: "tenantd.wal", target: .global(qos: .userInitiated))
        if configuration.fsync == .everysec { syncScheduler.register(self) }
    }

    deinit {
        self.io.withLock { io in
            if io.fd >= 0 { self.fileSystem.close(io.fd, path: io.segmentPath) }
        }
    }

    /// The lsn of the last record appended (durable or not).
    public var lastAppendedLSN: UInt64 { self.state.withLock { $0.nextLSN - 1 } }

    /// The lsn up to which records are durable under the policy.
    public var durableLSN: UInt64 { self.state.withLock { $0.durableLSN } }

    /// The error that stopped the writer, if one did.
    public var failure: WALError? { self.state.withLock { $0.failure } }

    /// Frames, compresses and queues one record; it is not durable until ``waitUntilDurable(_:)`` returns.
    /// - Parameters:
    ///   - type: the record's type byte, the caller's to define.
    ///   - payload: the record's bytes, at most ``WALConfiguration/maxRecordSize``.
    /// - Returns: the record's lsn.
    /// - Throws: ``WALError`` when the record is too large or the writer has failed or closed.
    /// - Complexity: O(n) in the payload's size.
    public func append(type: UInt8, payload: UnsafeRawBufferPointer) throws -> UInt64 {
        try self.appendRecord(type: type, payload: payload).lsn
    }

    /// Queues one record like ``append(type:payload:)``.
    /// - Returns: its lsn and its size on disk, header included.
    public func appendRecord(type: UInt8, payload: UnsafeRawBufferPointer) throws -> (lsn: UInt64, size: Int) {
        let limit = self.configuration.maxRecordSize
        guard payload.count <= limit else { throw WALError.recordTooLarge(payload.count, limit: limit) }
        return try self.state.withLock { state in
            if let failure = state.failure { throw failure }
            if state.closed { throw WALError.closed }
            if let shortage = state.shortage, state.pendingBytes >= WALLimits.maxHeldBackBytes {
                // A long shortage: memory stays bounded, the writes already queued land first.
                throw shortage
            }
            let lsn = state.nextLSN
            // A crafted log can end one short of the format's last lsn: a record past it would
            // make the log unreadable at the next start (the reader refuses it), so none is written.
            guard lsn < WALFormat.maxLSN else { throw WALError.failed("the log has reached its last lsn") }
            assert(lsn > state.durableLSN, "lsn \(lsn) appended, \(state.durableLSN) durable already")
            if !state.hasSegment || state.segmentBytes >= self.configuration.segmentSize || state.rollRequested {
                state.rollRequested = false
                state.compressor.reset()
                state.pending.append(Chunk(newSegment: lsn, bytes: []))
                state.segmentBytes = WALFormat.segmentHeaderSize
                state.hasSegment = true
            } else if state.pending.isEmpty {
                state.pending.append(Chunk(newSegment: nil, bytes: []))
            }
            let last = state.pending.count - 1
            let written = try Self.encode(
                type: type,
                lsn: lsn,
                payload: payload,
                compressor: state.compressor,
                into: &state.pending[last].bytes
            )
            state.nextLSN += 1
            state.segmentBytes += written
            state.pendingBytes += written
            return (lsn, written)
        }
    }

    /// Makes the next append start a new segment, so that every segment before it holds only
    /// records up to ``lastAppendedLSN`` (what a checkpoint covers and may drop).
    public func startNewSegment() {
        self.state.withLock { $0.rollRequested = true }
    }

    /// Appends a record from a byte array. See ``append(type:payload:)``.
    public func append(type: UInt8, payload: [UInt8]) throws -> UInt64 {
        try payload.withUnsafeBytes { try self.append(type: type, payload: $0) }
    }

    static func encode(
        type: UInt8,
        lsn: UInt64,
        payload: UnsafeRawBufferPointer,
        compressor: LZ4StreamCompressor,
        into bytes: inout [UInt8]
    ) throws -> Int {
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: WALFormat.recordHeaderSize))
        let stored: Int
        do {
            stored = try compressor.compress(payload, appendingTo: &bytes)
        } catch {
            bytes.removeLast(bytes.count - start)
            throw error
        }
        bytes.storeLittleEndian(UInt32(stored), at: start + 4)
        bytes[start + 8] = type
        bytes.storeLittleEndian(lsn, at: start + 9)
        bytes.storeLittleEndian(UInt32(payload.count), at: start + 17)
        let crc = bytes.withUnsafeBytes { raw in
            CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[(start + 4)...]))
        }
        bytes.storeLittleEndian(CRC32C.mask(crc), at: start)
        assert(
            WALFormat.recordHeaderIsValid(bytes, at: start, type: type, lsn: lsn, payloadSize: payload.count),
            "the record header written for lsn \(lsn) does not read back"
        )
        return bytes.count - start
    }

    /// Suspends until the record `lsn` is durable under the policy, starting a flush if none runs.
    /// - Throws: the ``WALError`` of a failed write or sync; the record is then not durable.
    public func waitUntilDurable(_ lsn: UInt64) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            self.wait(for: lsn, .task(continuation))
        }
    }

    /// Calls `callback` once the record `lsn` is durable under the policy (with nil) or its write
    /// failed (with the error), starting a flush if none runs. It is called at once when the
    /// answer is known, otherwise on the writer's queue.
    public func whenDurable(_ lsn: UInt64, _ callback: @escaping @Sendable (WALError?) -> Void) {
        self.wait(for: lsn, .callback(callback))
    }

    func wait(for lsn: UInt64, _ waiter: Waiter) {
        enum Action {
            case done
            case fail(WALError)
            case wait(startFlush: Bool)
        }
        let action: Action = self.state.withLock { state in
            if state.durableLSN >= lsn { return .done }
            if let failure = state.failure { return .fail(failure) }
            state.waiters.append((lsn, waiter))
            if state.flushing { return .wait(startFlush: false) }
            state.flushing = true
            return .wait(startFlush: true)
        }
        switch action {
        case .done: waiter.resume(nil)
        case .fail(let error): waiter.resume(error)
        case .wait(let startFlush):
            if startFlush { self.queue.async { self.flushLoop() } }
        }
    }

    /// Writes every record appended so far on the calling thread, with one write(2), when that
    /// cannot block for long: no other flush holds the segment, the records need no new segment,
    /// and the policy is not `always` (whose fdatasync belongs off the caller's thread).
    /// - Returns: true when nothing appended is left unwritten (durable under the policy, or the
    ///   log failed: ``failure`` tells); false when the caller must wait with ``whenDurable(_:_:)``.
    public func writeOnCaller() -> Bool {
        guard self.configuration.fsync != .always else { return false }
        let written: Bool? = self.io.withLockIfAvailable { io in
            let batch: (chunks: [Chunk], upTo: UInt64)? = self.state.withLock { state in
                guard state.failure == nil, state.shortage == nil, !state.pending.isEmpty,
                    !state.pending.contains(where: { $0.newSegment != nil })
                else { return nil }
                defer {
                    state.pending = []
                    state.pendingBytes = 0
                }
                return (state.pending, state.nextLSN - 1)
            }
            guard let batch else {
                return self.state.withLock { $0.pending.isEmpty }
            }
            self.write(batch.chunks, upTo: batch.upTo, io: &io)
            return true
        }
        return written ?? false
    }
    /// Runs `body` while nothing is written to the log's files, so that a copy of them made there
    /// holds one consistent log, up to the lsn `body` is given (what the files hold, durable under
    /// the policy). Appends go on meanwhile: they wait in the log's buffer, and an event loop's
    /// ``writeOnCaller()`` finds the files taken and leaves them to the log's queue, which writes
    /// them once `body` returns. What was written before is synced first (unless the policy is
    /// `no`): the `everysec` timer's sync waits for `body` too, and nothing acknowledged may wait
    /// that long unsynced. Run it off any event loop: it blocks while `body` runs.
    /// - Throws: the log's failure, or the shortage holding writes back: the files may then hold
    ///   bytes past the durable lsn.
    public func holdingFiles<T>(_ body: (_ lsn: UInt64) throws -> T) throws -> T {
        try self.io.withLock { io in
            let (lsn, problem) = self.state.withLock { ($0.durableLSN, $0.failure ?? $0.shortage) }
            if let problem { throw problem }
            if self.configuration.fsync != .no, io.unsynced, io.fd >= 0 {
                try self.fileSystem.sync(io.fd, path: io.segmentPath)
                io.unsynced = false
            }
            return try body(lsn)
        }
    }

    /// Flushes everything appended so far and fdatasyncs it, whatever the policy: for records
    /// that must be on disk before something else happens (a new tenant's first records, before
    /// its directory is renamed into place).
    public func flushAndSync() async throws {
        try await self.flush()
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            self.queue.async {
                do {
                    try self.io.withLock { io in
                        if io.fd >= 0 { try self.fileSystem.sync(io.fd, path: io.segmentPath) }
                        io.unsynced = false
                    }
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// The log's directory was renamed (with its parent) from under `oldPrefix` to `newPrefix`:
    /// later segments are made there. The open segment stays open: the rename kept its inode.
    public func moved(from oldPrefix: String, to newPrefix: String) {
        self.io.withLock { io in
            self.location.withLock { directory in
                if directory.hasPrefix(oldPrefix) { directory = newPrefix + directory.dropFirst(oldPrefix.count) }
            }
            if io.segmentPath.hasPrefix(oldPrefix) {
                io.segmentPath = newPrefix + io.segmentPath.dropFirst(oldPrefix.count)
            }
        }
    }

    /// Suspends until everything appended so far is durable.
    public func flush() async throws {
        try await self.waitUntilDurable(self.lastAppendedLSN)
    }

    /// Flushes, fdatasyncs whatever policy is set, and closes the segment; later appends fail.
    public func close() async throws {
        try await self.flush()
        self.state.withLock { $0.closed = true }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            self.queue.async {
                do {
                    try self.io.withLock { io in
                        if io.fd >= 0 {
                            try self.fileSystem.sync(io.fd, path: io.segmentPath)
                            self.fileSystem.close(io.fd, path: io.segmentPath)
                            io.fd = -1
                        }
                    }
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

}
