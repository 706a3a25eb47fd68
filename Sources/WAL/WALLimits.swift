/// Every numeric limit of the log, with its unit and its reason, in one place (issue 22,
/// point 3). The record and segment formats' own constants (header sizes, field offsets) are
/// ``WALFormat``'s; `WALLimitsTests` checks the relations between these.
public enum WALLimits {
    /// Bytes. The default bound on one record's uncompressed payload: a message of the largest
    /// `TENANT_MAX_MESSAGE_BYTES` with its framing fits (the engine raises it when that setting does).
    public static let defaultMaxRecordSize = 1 << 20
    /// Bytes. A segment past this size gets no more appends; the next starts a new one, so that a
    /// checkpoint frees the disk in pieces this size.
    public static let defaultSegmentSize = 8 << 20
    /// Bytes. While a shortage (EMFILE, ENFILE, ENOMEM opening a segment) holds writes back, the
    /// most queued before appends are refused too: a tenant's memory stays bounded in a shortage.
    public static let maxHeldBackBytes = 4 << 20
    /// Logs. Past this many dirty logs on one file system, a tick syncs the file system once
    /// (syncfs) instead of each log: 10,000 active tenants' logs cost one call a second, not
    /// 10,000 fdatasyncs that each hold their log's writes back while they run.
    public static let fileSystemSyncThreshold = 16
    /// Bytes. A file is copied this much at a time: a checkpoint of gigabytes never sits in memory.
    public static let copyChunkSize = 1 << 20
    /// Directories. How deep a tree is searched for a link or special file before the search
    /// gives up and refuses it: tenantd itself makes trees two levels deep.
    public static let maxTreeDepth = 16
}
