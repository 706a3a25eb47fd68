/// The HELP text of every metric family tenantd exports, by name: what docs/operations.md lists.
public enum MetricHelp {
    public static let text: [String: String] = [
        // Server-wide, through swift-metrics.
        "tenantd_commands_total": "Commands run, by command (commands tenantd does not have as command=\"other\").",
        "tenantd_command_errors_total": "Error replies, by contract error code.",
        "tenantd_connections_total": "Client connections accepted since start.",
        "tenantd_connections_refused_total": "Connections refused over maxclients.",
        "tenantd_connections_open": "Client connections open now.",
        "tenantd_auth_failures_total": "Failed AUTH and HELLO AUTH attempts.",
        "tenantd_fair_share_waits_total":
            "Times a connection stopped reading because its tenant was at its fair share.",
        "tenantd_tenants_active": "Tenants open in memory now.",
        "tenantd_tenants_passive": "Tenants known but not open (passivated or not yet used since start).",
        "tenantd_memory_messages_bytes": "Bytes of messages held in memory under the memory budget.",
        "tenantd_memory_messages_limit_bytes": "The memory budget's share for messages, in bytes.",
        "tenantd_memory_chunk_cache_bytes": "Bytes of cold message chunks cached in memory.",
        "tenantd_checkpoints_total": "Tenant checkpoints written, by outcome.",
        // Rendered by tenantd itself (lock-free histograms and per-tenant series).
        "tenantd_command_duration_seconds":
            "Time to run a command, from its dispatch to its reply being ready (a POST's wait for durability excluded: see tenantd_wal_*).",
        "tenantd_wal_append_seconds":
            "Time to write one batch of log records to a tenant log (one write per group commit).",
        "tenantd_wal_fsync_seconds": "Time of one fdatasync (or syncfs) of a tenant log.",
        "tenantd_checkpoint_seconds": "Time to write one tenant checkpoint.",
        "tenant_requests_total": "Commands run in the tenant's context.",
        "tenant_storage_bytes": "Bytes the tenant holds on disk (what its storage quota counts).",
        "tenant_users_count": "Users of the tenant.",
        "tenant_messages_posted_total": "Messages accepted into the tenant's log.",
        "tenant_quota_rejections_total": "Writes refused with QUOTA, by limit (messages_per_day, storage, users).",
        "tenant_bytes_in_total": "Request bytes received on connections in the tenant's context.",
        "tenant_bytes_out_total": "Reply bytes sent on connections in the tenant's context.",
        "tenantd_backups_total": "Scheduled tenant backups, by outcome (written, failed).",
        "tenantd_backup_seconds": "Time to write one scheduled tenant backup.",
        "tenant_last_backup_timestamp_seconds": "When the tenant's last scheduled backup was written (Unix time).",
        "tenant_series_omitted":
            "Tenants whose series are summed under tenant_id=\"_other\" (past --metrics-tenants; the first tenants given series keep them).",
    ]
}
