import Dispatch
import Synchronization
import TenantMetrics

/// Syncs the logs written under `everysec` once a second, on one timer for the whole process, so
/// idle logs cost nothing.
/// `@unchecked Sendable`: `dirty` is a `Mutex`; `timer` is set up in `init` and only cancelled after.
public final class WALSyncScheduler: @unchecked Sendable {
    /// The process-wide scheduler.
    public static let shared = WALSyncScheduler(interval: .seconds(1))

    private let dirty = Mutex<[ObjectIdentifier: WALWriter]>([:])
    /// A descriptor per file system (by device), opened when its first log was: syncfs through
    /// it reports every write-back error since then (nil where none could be opened).
    private let handles = Mutex<[UInt64: (fd: Int32, fileSystem: any WALFileSystem)?]>([:])
    private let timer: any DispatchSourceTimer

    /// Creates a scheduler that syncs dirty logs every `interval`.
    public init(interval: DispatchTimeInterval) {
        let timer = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
        self.timer = timer
        timer.schedule(deadline: .now() + interval, repeating: interval, leeway: .milliseconds(50))
        timer.setEventHandler { [weak self] in self?.tick() }
        timer.resume()
    }

    deinit {
        self.timer.cancel()
        for case let (fd, fileSystem)? in self.handles.withLock({ Array($0.values) }) {
            fileSystem.close(fd, path: "(file system handle)")
        }
    }

    /// A log opened under `everysec`: the first on its file system opens the handle its ticks
    /// sync through.
    func register(_ writer: WALWriter) {
        guard let device = writer.device else { return }
        self.handles.withLock { handles in
            guard handles.index(forKey: device) == nil else { return }
            handles[device] = (try? writer.fileSystem.openFileSystemHandle(writer.directory)).map {
                ($0, writer.fileSystem)
            }
        }
    }

    /// Remembers a log with written but unsynced bytes.
    func markDirty(_ writer: WALWriter) {
        self.dirty.withLock { $0[ObjectIdentifier(writer)] = writer }
    }

    /// Syncs every dirty log now: each on its own queue, or, past ``WALLimits/fileSystemSyncThreshold`` on
    /// one file system, all of them with one syncfs on this thread (the writers' queues go on
    /// writing meanwhile: what they wrote before the call is durable when it returns, what came
    /// after marks its log dirty again for the next tick).
    public func tick() {
        let writers = self.dirty.withLock { dirty in
            defer { dirty.removeAll(keepingCapacity: true) }
            return Array(dirty.values)
        }
        guard writers.count > WALLimits.fileSystemSyncThreshold else {
            for writer in writers { writer.syncInBackground() }
            return
        }
        var byDevice: [UInt64: [WALWriter]] = [:]
        for writer in writers {
            guard let device = writer.device else {
                writer.syncInBackground()
                continue
            }
            byDevice[device, default: []].append(writer)
        }
        for (device, group) in byDevice {
            if group.count > WALLimits.fileSystemSyncThreshold, self.syncFileSystem(device: device) {
                continue
            }
            for writer in group { writer.syncInBackground() }
        }
    }

    /// One syncfs of a file system through its handle.
    /// - Returns: true when it synced everything; false when there is no handle, no syncfs, or
    ///   it failed: then each log syncs on its own, and each log's fdatasync reports its own
    ///   errors (a failed syncfs cannot tell which file lost a write, and may be another
    ///   program's).
    private func syncFileSystem(device: UInt64) -> Bool {
        guard let (fd, fileSystem) = self.handles.withLock({ $0[device] ?? nil }) else { return false }
        let start = LatencyHistogram.now()
        defer { WALMetrics.fsync.record(since: start) }
        return (try? fileSystem.syncFileSystem(handle: fd, path: "(file system of device \(device))")) == true
    }
}
