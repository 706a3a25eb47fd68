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

    /// Syncs every dirty log now.
    public func tick() {
        let writers = self.dirty.withLock { dirty in
            defer { dirty.removeAll(keepingCapacity: true) }
            return Array(dirty.values)
        }
        for writer in writers { writer.syncInBackground() }
    }
}
