import TenantMetrics

/// The logs' latencies, over every tenant's log (`tenantd_wal_append_seconds`,
/// `tenantd_wal_fsync_seconds`): recorded once per batch or sync, without a lock.
public enum WALMetrics {
    /// One group commit's write of its records to the segment.
    public static let append = LatencyHistogram()
    /// One fdatasync of a segment, or one syncfs of a file system holding many logs.
    public static let fsync = LatencyHistogram()
}
