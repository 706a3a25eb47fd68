import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Raises the open-files limit for `maxclients`, as Redis's `adjustOpenFilesLimit` does.
enum FileDescriptorLimit {
    /// Descriptors kept beyond the clients: listeners, logs, checkpoints, the catalog, tenants'
    /// segments. Redis keeps 32; tenantd's open tenants each hold a log segment too.
    static let reserved = 1024

    /// Raises the soft `RLIMIT_NOFILE` to `maxClients + reserved` as far as the hard limit allows.
    /// - Returns: `maxClients`, lowered (with a log line) when the system cannot hold that many.
    static func adjust(maxClients: Int, logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return maxClients }
        let wanted = rlim_t(maxClients + Self.reserved)
        if limit.rlim_cur >= wanted { return maxClients }
        var raised = limit
        raised.rlim_cur = min(wanted, limit.rlim_max)
        if raised.rlim_cur > limit.rlim_cur, setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
            limit = raised
        }
        if limit.rlim_cur >= wanted { return maxClients }
        let available = Int(clamping: limit.rlim_cur) - Self.reserved
        let lowered = max(1, available)
        let message =
            "You requested maxclients of \(maxClients) requiring at least \(wanted) max file descriptors; "
            + "the open-files limit is \(limit.rlim_cur) (hard \(limit.rlim_max)). maxclients has been reduced "
            + "to \(lowered) to compensate for low ulimit. Raise it with 'ulimit -n' or LimitNOFILE."
        logger.warning(Logger.Message(stringLiteral: message))
        return lowered
    }
}
