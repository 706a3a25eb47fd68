import Dispatch
import Synchronization

/// Syncs the logs written under `everysec` once a second, on one timer for the whole process, so
/// idle logs cost nothing.
/// `@unchecked Sendable`: `dirty` is a `Mutex`; `timer` is set up in `init` and only cancelled after.
public final class WALSyncScheduler: @unchecked Sendable {
    /// The process-wide scheduler.
    public static let shared = WALSyncScheduler(interval: .seconds(1))

    private let dirty = Mutex<[ObjectIdentifier: WALWriter]>([:])
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
    }

    /// Remembers a log with written but unsynced bytes.
    func markDirty(_ writer: WALWriter) {
        self.dirty.withLock { $0[ObjectIdentifier(writer)] = writer }
    }

    /// Past this many dirty logs on one file system, a tick syncs the file system once (syncfs)
    /// instead of each log: 10,000 active tenants' logs cost one call a second, not 10,000
    /// fdatasyncs that each hold their log's writes back while it runs.
    public static let fileSystemSyncThreshold = 16

    /// Syncs every dirty log now: each on its own queue, or, past ``fileSystemSyncThreshold`` on
    /// one file system, all of them with one syncfs on this thread (the writers' queues go on
    /// writing meanwhile: what they wrote before the call is durable when it returns, what came
    /// after marks its log dirty again for the next tick).
    public func tick() {
        let writers = self.dirty.withLock { dirty in
            defer { dirty.removeAll(keepingCapacity: true) }
            return Array(dirty.values)
        }
        guard writers.count > Self.fileSystemSyncThreshold else {
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
        for group in byDevice.values {
            if group.count > Self.fileSystemSyncThreshold {
                Self.syncFileSystem(of: group)
            } else {
                for writer in group { writer.syncInBackground() }
            }
        }
    }

    /// One syncfs for the logs of one file system, through the first whose directory is still
    /// there (a log may have been deleted or moved since it was written). A failure fails them all:
    /// which of them lost a write cannot be told, and none may be trusted.
    private static func syncFileSystem(of writers: [WALWriter]) {
        for writer in writers {
            let directory = writer.directory
            guard writer.fileSystem.exists(directory) else { continue }
            do {
                if try writer.fileSystem.syncFileSystem(containing: directory) { return }
                break  // no syncfs here: each log on its own
            } catch {
                for each in writers { each.syncFailed(error) }
                return
            }
        }
        for writer in writers { writer.syncInBackground() }
    }
}
