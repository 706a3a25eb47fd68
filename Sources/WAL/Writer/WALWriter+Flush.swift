import Dispatch
import LZ4
import Synchronization
import TenantMetrics

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The writer's flush side, on its queue: batches written in order, a shortage held back,
/// segments opened and synced.
extension WALWriter {
    /// Runs on `queue`: writes batches until none is left.
    func flushLoop() {
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
    func write(_ chunks: [Chunk], upTo: UInt64, io: inout IO) -> Bool {
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
    func holdBack(_ chunks: [Chunk], error: WALError, io: inout IO) {
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
    func fail(_ error: any Error) {
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
    func openSegment(firstLSN: UInt64, io: inout IO) throws {
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
