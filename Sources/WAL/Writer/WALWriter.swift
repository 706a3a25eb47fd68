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
    private enum Waiter {
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
    private struct IO {
        var fd: Int32 = -1
        var segmentPath = ""
        var unsynced = false
        /// The delay before the next retry of a batch a transient fault held back.
        var retryDelay = 0.0
    }

    private struct Chunk {
        var newSegment: UInt64?
        var bytes: [UInt8]
    }

    private struct State {
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
    private let location: Mutex<String>
    /// The device holding the log (nil when it could not be told), for the `everysec` timer's
    /// one sync per file system.
    let device: UInt64?
    /// The log's settings.
    public let configuration: WALConfiguration
    private let state: Mutex<State>
    private let queue: DispatchQueue
    private let syncScheduler: WALSyncScheduler
    let fileSystem: any WALFileSystem
    private let io = Mutex(IO())

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

    private static func encode(
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

    private func wait(for lsn: UInt64, _ waiter: Waiter) {
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

    /// Runs on `queue`: writes batches until none is left.
    private func flushLoop() {
        while true {
            let more = self.io.withLock { io -> Bool in
                let batch: (chunks: [Chunk], upTo: UInt64)? = self.state.withLock { state in
                    guard !state.pending.isEmpty else {
                        state.flushing = false
                        return nil
                    }
                    defer {
                        state.pending = []
                        state.pendingBytes = 0
                    }
                    return (state.pending, state.nextLSN - 1)
                }
                guard let batch else { return false }
                return self.write(batch.chunks, upTo: batch.upTo, io: &io)
            }
            guard more else { return }
        }
    }

    /// Under `io`: writes a batch taken from `pending` (records up to `upTo`), syncs it as the
    /// policy says, and resumes the waiters it made durable.
    /// - Returns: false when the log failed or a shortage held the batch back (the flush stops).
    @discardableResult
    private func write(_ chunks: [Chunk], upTo: UInt64, io: inout IO) -> Bool {
        var written = 0
        do {
            let start = LatencyHistogram.now()
            for chunk in chunks {
                if let firstLSN = chunk.newSegment { try self.openSegment(firstLSN: firstLSN, io: &io) }
                try chunk.bytes.withUnsafeBytes { try self.fileSystem.write(io.fd, $0, path: io.segmentPath) }
                written += 1
            }
            WALMetrics.append.record(since: start)
            switch self.configuration.fsync {
            case .always:
                let syncStart = LatencyHistogram.now()
                try self.fileSystem.sync(io.fd, path: io.segmentPath)
                WALMetrics.fsync.record(since: syncStart)
            case .everysec:
                io.unsynced = true
                self.syncScheduler.markDirty(self)
            case .no:
                break
            }
            let ready = self.state.withLock { state in
                state.durableLSN = max(state.durableLSN, upTo)
                assert(state.durableLSN < state.nextLSN, "durable \(state.durableLSN) past the last appended")
                state.shortage = nil
                var ready: [Waiter] = []
                state.waiters.removeAll { waiter in
                    guard waiter.lsn <= upTo else { return false }
                    ready.append(waiter.waiter)
                    return true
                }
                return ready
            }
            io.retryDelay = 0
            for waiter in ready { waiter.resume(nil) }
            return true
        } catch let shortage as WALError where shortage.isTransient {
            // Out of descriptors or memory when creating a segment: nothing was written and
            // nothing is damaged. The batch's waiters are told (their writes are not
            // acknowledged, though they may still land), the unwritten chunks go back to the
            // head of the queue, and the writer tries again shortly. Any other failure, a
            // write's or a sync's whatever its errno, fails the log: retrying a write that
            // may have partly landed, or trusting a failed fsync, could corrupt or lose data.
            self.holdBack(Array(chunks[written...]), error: shortage, io: &io)
            return false
        } catch {
            self.fail(error)
            return false
        }
    }

    /// Under `io`: puts unwritten chunks back, fails the current waiters with `error`, and
    /// schedules a retry on the queue (backing off to a second).
    private func holdBack(_ chunks: [Chunk], error: WALError, io: inout IO) {
        let waiters = self.state.withLock { state in
            state.pending = chunks + state.pending
            state.pendingBytes += chunks.reduce(0) { $0 + $1.bytes.count }
            state.shortage = error
            state.flushing = false
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.waiter.resume(error) }
        io.retryDelay = min(1, max(0.01, io.retryDelay * 2))
        self.queue.asyncAfter(deadline: .now() + io.retryDelay) {
            let start = self.state.withLock { state -> Bool in
                guard !state.flushing, !state.pending.isEmpty, state.failure == nil else { return false }
                state.flushing = true
                return true
            }
            if start { self.flushLoop() }
        }
    }

    /// Turns the writer read-only and fails every waiter with `error`.
    private func fail(_ error: any Error) {
        let walError = (error as? WALError) ?? WALError.failed("\(error)")
        let waiters = self.state.withLock { state in
            if state.failure == nil { state.failure = WALError.failed(walError.description) }
            state.flushing = false
            state.pending = []
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.waiter.resume(walError) }
    }

    /// Under `io`: closes the current segment and starts the next one durably.
    private func openSegment(firstLSN: UInt64, io: inout IO) throws {
        if io.fd >= 0 {
            try self.fileSystem.sync(io.fd, path: io.segmentPath)
            self.fileSystem.close(io.fd, path: io.segmentPath)
            io.fd = -1
        }
        let path = self.directory + "/" + WALFormat.segmentName(firstLSN: firstLSN)
        // A segment of this name can only be a header left by a crash before its first record:
        // recovery ended at firstLSN - 1, so truncating it loses nothing.
        let fd: Int32
        do {
            fd = try self.fileSystem.createSegment(path)
        } catch let error as WALError {
            throw error.asShortage ?? error
        }
        io.fd = fd
        io.segmentPath = path
        try WALFormat.segmentHeader(firstLSN: firstLSN).withUnsafeBytes {
            try self.fileSystem.write(fd, $0, path: path)
        }
        try self.fileSystem.sync(fd, path: path)
        try self.fileSystem.syncDirectory(self.directory)
    }

    /// A sync of the log's whole file system failed: the log fails, as when its own sync fails.
    func syncFailed(_ error: any Error) {
        // Under `io`: no write lands between the failed sync and the failure (an event loop
        // writing on its own thread would otherwise have it acknowledged).
        self.io.withLock { _ in self.fail(error) }
    }

    /// Schedules an fdatasync of unsynced bytes on the writer's queue (the `everysec` timer calls this).
    func syncInBackground() {
        self.queue.async {
            self.io.withLock { io in
                guard io.unsynced, io.fd >= 0 else { return }
                io.unsynced = false
                let start = LatencyHistogram.now()
                do {
                    try self.fileSystem.sync(io.fd, path: io.segmentPath)
                } catch {
                    // Still under `io`: no write lands between the failed sync and the failure.
                    self.fail(error)
                }
                WALMetrics.fsync.record(since: start)
            }
        }
    }
}
