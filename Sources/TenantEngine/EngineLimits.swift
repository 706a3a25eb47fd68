/// Every numeric limit of the engine in one place, each with its unit and why it is what it is
/// (issue 22, point 3). Format constants (header sizes, flags, the minimum size of an encoded
/// entry) stay with their formats: they describe bytes on disk, not a choice.
/// `EngineLimitsTests` checks the relations between them.
public enum EngineLimits {
    // MARK: Rooms and replies

    /// Bytes of text in a room's chunk past which it is sealed (and may go cold). 32 KiB: a
    /// chunk compresses well and a cold read brings back little more than a page of history.
    static let roomChunkTextBytes = 32 << 10
    /// Messages in a room's chunk past which it is sealed: bounds a chunk of short messages.
    static let roomChunkMessages = 512
    /// Messages one HISTORY returns at most (Redis's XREVRANGE COUNT is the client's choice; a
    /// bound here keeps one reply's memory bounded).
    public static let maxHistoryLimit = 1000
    /// Messages HISTORY returns without LIMIT.
    public static let defaultHistoryLimit = 100
    /// Bytes of message text one HISTORY returns at most (always at least one message): 4 MiB,
    /// so 1,000 long messages cannot make a reply of a gigabyte.
    static let maxHistoryTextBytes = 4 << 20
    /// Rooms one ROOMS reply holds at most: the client pages on with AFTER.
    public static let maxRoomsPage = 10_000
    /// Users one USER LIST reply holds at most (as ROOMS: no reply is unbounded).
    public static let maxUsersPage = 10_000

    // MARK: Tenant settings (TENANT UPDATE's ranges; 0 is no limit)

    /// Settings one tenant may hold.
    static let maxSettings = 256
    /// `max_users` at most: a billion users.
    static let maxUsersLimit: Int64 = 1_000_000_000
    /// `max_storage_bytes` at most: 8 EiB (2^63 - 1 bytes; `max_storage_gb` up to 8,589,934,591).
    static let maxStorageBytesLimit: Int64 = .max
    /// `max_messages_per_day` at most: a trillion.
    static let maxMessagesPerDayLimit: Int64 = 1_000_000_000_000

    // MARK: Memory a tenant keeps

    /// Bytes of a tenant's record scratch buffer kept between records: 2 KiB holds most chat
    /// messages; a larger record allocates its own, so ten thousand open tenants hold at most
    /// 20 MiB of scratch.
    static let recordScratchLimit = 2 << 10

    // MARK: The registry's files

    /// Bytes of the credential journal past which the catalog is written and the journal started
    /// again.
    static let credentialCompactionBytes = 1 << 20
    /// Bytes of a credential journal start-up reads at most (it is compacted at 1 MiB: more is
    /// damage, not data).
    static let credentialMaxReplayBytes = 64 << 20
    /// Bytes an import appends before it flushes the log (the writer holds them until then).
    static let importFlushBytes = 8 << 20

    // MARK: Migration

    /// Bytes a live round may send and still be followed by the pause (4 MiB: a pause of well
    /// under a second on a LAN).
    static let migrationPauseThreshold = 4 << 20
    /// Rounds while the tenant serves: a tenant written faster than it is sent pauses after
    /// these all the same.
    static let migrationMaxLiveRounds = 5
    /// Bytes of the file system block a staged file or directory counts as at least.
    static let migrationStagingBlock = 4096
    /// Bytes of the largest file a migration may send (a WAL segment or a checkpoint): 1 TiB.
    static let migrationMaxFileSize = 1 << 40
    /// Files one tenant directory may send.
    static let migrationMaxFiles = 100_000
    /// How deep a sent path may go (`checkpoint/x` is two).
    static let migrationMaxDepth = 4
    /// Bytes one CHUNK carries: 256 KiB, a RESP bulk string well under the 512 MiB protocol bound.
    static let migrationChunkSize = 256 << 10
    /// Bytes of a migration marker read at most (its credential keys take 17 bytes a user).
    static let migrationMarkerLimit = 64 << 20

    // MARK: Replication (docs/architecture.md, "Replicas")

    /// Bytes of a tenant's full copy in one snapshot chunk frame: the migration's chunk size.
    public static let replicationChunkSize = 256 << 10
    /// Bytes of one replication frame's body at most: a record of the largest message
    /// (`TENANT_MAX_MESSAGE_BYTES` up to 16 MiB, with its framing) fits, so does a chunk.
    public static let replicationMaxFrameBytes = (16 << 20) + (64 << 10)
    /// Bytes a tenant's snapshot may declare: a tenant's whole state, bounded so that no
    /// declaration sizes anything absurd (1 TiB).
    public static let replicationMaxSnapshotBytes: UInt64 = 1 << 40
}
