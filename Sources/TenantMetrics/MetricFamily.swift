/// One metric family tenantd exports, declared once: its name, its Prometheus type, its HELP
/// text, and the INFO field that shows the same figure (if one does). The recorder creates its
/// swift-metrics series or renders its samples under ``name``, `/metrics` writes its `# HELP` and
/// `# TYPE` from here, and INFO names its field from here: adding a metric is one declaration
/// here and one record site (issue 22, point 4). docs/operations.md lists the same families.
public struct MetricFamily: Sendable, Hashable {
    public let name: String
    public let kind: PrometheusText.Kind
    public let help: String
    /// The INFO field that shows this family's figure (its count, for a histogram; its sum over
    /// the tenants, for a per-tenant series); nil when INFO has none.
    public let infoField: String?

    init(_ name: String, _ kind: PrometheusText.Kind, _ help: String, info: String? = nil) {
        self.name = name
        self.kind = kind
        self.help = help
        self.infoField = info
    }

    /// The INFO field of a family that has one (a declaration without it is a programming error).
    public var info: String {
        guard let field = self.infoField else { preconditionFailure("\(self.name) has no INFO field") }
        return field
    }
}

extension MetricFamily {
    // Server-wide, through swift-metrics.
    public static let commands = MetricFamily(
        "tenantd_commands_total",
        .counter,
        "Commands run, by command (commands tenantd does not have as command=\"other\").",
        info: "total_commands_processed"
    )
    public static let commandErrors = MetricFamily(
        "tenantd_command_errors_total",
        .counter,
        "Error replies, by contract error code."
    )
    public static let connections = MetricFamily(
        "tenantd_connections_total",
        .counter,
        "Client connections accepted since start.",
        info: "total_connections_received"
    )
    public static let connectionsRefused = MetricFamily(
        "tenantd_connections_refused_total",
        .counter,
        "Connections refused over maxclients.",
        info: "rejected_connections"
    )
    public static let connectionsOpen = MetricFamily(
        "tenantd_connections_open",
        .gauge,
        "Client connections open now.",
        info: "connected_clients"
    )
    public static let authFailures = MetricFamily(
        "tenantd_auth_failures_total",
        .counter,
        "Failed AUTH and HELLO AUTH attempts.",
        info: "acl_access_denied_auth"
    )
    public static let fairShareWaits = MetricFamily(
        "tenantd_fair_share_waits_total",
        .counter,
        "Times a connection stopped reading because its tenant was at its fair share."
    )
    public static let tenantsActive = MetricFamily(
        "tenantd_tenants_active",
        .gauge,
        "Tenants open in memory now.",
        info: "tenants_active"
    )
    public static let tenantsPassive = MetricFamily(
        "tenantd_tenants_passive",
        .gauge,
        "Tenants known but not open (passivated or not yet used since start).",
        info: "tenants_passive"
    )
    public static let memoryMessages = MetricFamily(
        "tenantd_memory_messages_bytes",
        .gauge,
        "Bytes of messages held in memory under the memory budget.",
        info: "used_memory_messages"
    )
    public static let memoryMessagesLimit = MetricFamily(
        "tenantd_memory_messages_limit_bytes",
        .gauge,
        "The memory budget's share for messages, in bytes."
    )
    public static let memoryChunkCache = MetricFamily(
        "tenantd_memory_chunk_cache_bytes",
        .gauge,
        "Bytes of cold message chunks cached in memory."
    )
    public static let checkpoints = MetricFamily(
        "tenantd_checkpoints_total",
        .counter,
        "Tenant checkpoints written, by outcome."
    )
    public static let backups = MetricFamily(
        "tenantd_backups_total",
        .counter,
        "Scheduled tenant backups, by outcome (written, failed)."
    )

    // Rendered by tenantd itself: lock-free histograms.
    public static let commandDuration = MetricFamily(
        "tenantd_command_duration_seconds",
        .histogram,
        "Time to run a command, from its dispatch to its reply being ready (a POST's wait for durability excluded: see tenantd_wal_*)."
    )
    public static let walAppend = MetricFamily(
        "tenantd_wal_append_seconds",
        .histogram,
        "Time to write one batch of log records to a tenant log (one write per group commit).",
        info: "wal_appends"
    )
    public static let walFsync = MetricFamily(
        "tenantd_wal_fsync_seconds",
        .histogram,
        "Time of one fdatasync (or syncfs) of a tenant log.",
        info: "wal_fsyncs"
    )
    public static let checkpointDuration = MetricFamily(
        "tenantd_checkpoint_seconds",
        .histogram,
        "Time to write one tenant checkpoint.",
        info: "checkpoints_written"
    )
    public static let backupDuration = MetricFamily(
        "tenantd_backup_seconds",
        .histogram,
        "Time to write one scheduled tenant backup."
    )

    // Rendered by tenantd itself: the per-tenant series of the seed.
    public static let tenantRequests = MetricFamily(
        "tenant_requests_total",
        .counter,
        "Commands run in the tenant's context."
    )
    public static let tenantStorage = MetricFamily(
        "tenant_storage_bytes",
        .gauge,
        "Bytes the tenant holds on disk (what its storage quota counts)."
    )
    public static let tenantUsers = MetricFamily(
        "tenant_users_count",
        .untyped,
        "Users of the tenant."
    )
    public static let tenantMessagesPosted = MetricFamily(
        "tenant_messages_posted_total",
        .counter,
        "Messages accepted into the tenant's log.",
        info: "total_messages_posted"
    )
    public static let tenantQuotaRejections = MetricFamily(
        "tenant_quota_rejections_total",
        .counter,
        "Writes refused with QUOTA, by limit (messages_per_day, storage, users).",
        info: "total_quota_rejections"
    )
    public static let tenantBytesIn = MetricFamily(
        "tenant_bytes_in_total",
        .counter,
        "Request bytes received on connections in the tenant's context."
    )
    public static let tenantBytesOut = MetricFamily(
        "tenant_bytes_out_total",
        .counter,
        "Reply bytes sent on connections in the tenant's context."
    )
    public static let tenantLastBackup = MetricFamily(
        "tenant_last_backup_timestamp_seconds",
        .gauge,
        "When the tenant's last scheduled backup was written (Unix time)."
    )
    public static let tenantSeriesOmitted = MetricFamily(
        "tenant_series_omitted",
        .gauge,
        "Tenants whose series are summed under tenant_id=\"_other\" (past --metrics-tenants; the first tenants given series keep them)."
    )

    /// Every family tenantd exports.
    public static let all: [MetricFamily] = [
        .commands, .commandErrors, .connections, .connectionsRefused, .connectionsOpen, .authFailures,
        .fairShareWaits, .tenantsActive, .tenantsPassive, .memoryMessages, .memoryMessagesLimit,
        .memoryChunkCache, .checkpoints, .backups, .commandDuration, .walAppend, .walFsync,
        .checkpointDuration, .backupDuration, .tenantRequests, .tenantStorage, .tenantUsers,
        .tenantMessagesPosted, .tenantQuotaRejections, .tenantBytesIn, .tenantBytesOut, .tenantLastBackup,
        .tenantSeriesOmitted,
    ]

    /// The family named `name`, if tenantd exports it.
    public static func named(_ name: String) -> MetricFamily? { Self.byName[name] }

    private static let byName: [String: MetricFamily] = Dictionary(
        uniqueKeysWithValues: Self.all.map { ($0.name, $0) }
    )
}
