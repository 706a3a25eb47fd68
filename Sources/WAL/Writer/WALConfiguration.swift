/// When the log's appends reach the disk.
public enum FsyncPolicy: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Acknowledge after fdatasync(2); concurrent appends share one fdatasync (group commit).
    case always
    /// Acknowledge after write(2); fdatasync once a second. kill -9 loses nothing, a power cut about a second.
    case everysec
    /// Acknowledge after write(2); the kernel decides when data reaches the disk.
    case no

    public var description: String { self.rawValue }
}

/// The settings of one log.
public struct WALConfiguration: Sendable {
    /// When appends are made durable.
    public var fsync: FsyncPolicy
    /// The size past which the next append starts a new segment.
    public var segmentSize: Int
    /// The largest uncompressed payload of one record.
    public var maxRecordSize: Int

    /// Creates a configuration.
    public init(
        fsync: FsyncPolicy = .everysec,
        segmentSize: Int = WALLimits.defaultSegmentSize,
        maxRecordSize: Int = WALLimits.defaultMaxRecordSize
    ) {
        self.fsync = fsync
        self.segmentSize = segmentSize
        self.maxRecordSize = maxRecordSize
    }
}
