/// When a tenant's next checkpoint is due, and what the last one covered.
struct CheckpointSchedule: Sendable {
    /// The lsn of the tenant's newest record.
    var lastOwnLSN: UInt64 = 0
    /// The cut the newest checkpoint covers.
    var lastCheckpointLSN: UInt64 = 0
    /// Log bytes the tenant appended since the last checkpoint began.
    var bytesSinceCheckpoint: Int64 = 0
    /// `bytesSinceCheckpoint` when the checkpoint being written was captured.
    var bytesAtCapture: Int64 = 0
    /// The bytes the last checkpoint left on disk: the next one waits for as many log bytes (or
    /// the configured threshold, if larger), so rewriting the state costs at most as many bytes
    /// as the log took since (as Redis rewrites its AOF when it has doubled).
    var lastCheckpointSize: Int64 = 0
    var running = false

    /// Counts an appended record.
    /// - Returns: true when a checkpoint is due (`threshold` bytes, or the last checkpoint's size
    ///   if larger) and none runs.
    mutating func appended(lsn: UInt64, size: Int, threshold: Int64) -> Bool {
        self.lastOwnLSN = lsn
        self.bytesSinceCheckpoint += Int64(size)
        return self.bytesSinceCheckpoint >= max(threshold, self.lastCheckpointSize) && !self.running
    }

    /// A checkpoint at `cut` is written, `size` bytes on disk: the bytes appended since its
    /// capture count towards the next.
    mutating func written(cut: UInt64, size: Int64) {
        self.lastCheckpointLSN = cut
        self.lastCheckpointSize = size
        self.bytesSinceCheckpoint = max(0, self.bytesSinceCheckpoint - self.bytesAtCapture)
    }

    /// True when records were appended since the last checkpoint.
    var hasNewRecords: Bool { self.lastOwnLSN > self.lastCheckpointLSN }
}
