import Logging

/// A tenant's usage against its limits: bytes on disk, messages per UTC day, users; it refuses
/// what would cross a limit (QUOTA) and logs once when a counter crosses 80, 90 and 100 %.
struct QuotaAccount: Sendable {
    /// Bytes this tenant holds on disk: its directory, or its share of a shared log.
    var storageBytes: Int64
    /// Messages per UTC day, counted when accepted.
    private(set) var day: MessageDayCounter
    /// The levels already logged, per limit and period.
    private var loggedLevels: [String: Int] = [:]
    /// Where refusals are counted.
    let counters: TenantCounters

    init(storageBytes: Int64, day: MessageDayCounter, counters: TenantCounters) {
        self.storageBytes = storageBytes
        self.day = day
        self.counters = counters
    }

    /// Messages in the UTC day holding `now`.
    func messages(onDayOf now: Int64) -> Int64 { self.day.count(onDayOf: now) }

    /// Refuses a message over the daily or storage limit; counts it otherwise.
    mutating func admitMessage(now: Int64, limits metadata: TenantMetadata, logger: Logger) throws {
        let today = self.day.count(onDayOf: now)
        if metadata.maxMessagesPerDay > 0 && today >= metadata.maxMessagesPerDay {
            let nextDay = (now / MessageDayCounter.millisecondsPerDay + 1) * MessageDayCounter.millisecondsPerDay
            let retry = (nextDay - now + 999) / 1000
            self.counters.rejected(.messagesPerDay)
            throw TenantError(
                .quotaExceeded,
                "messages_per_day \(today)/\(metadata.maxMessagesPerDay) retry_after=\(retry)"
            )
        }
        try self.checkStorage(limits: metadata, logger: logger)
        self.day.count(timestamp: now)
        self.note(
            "messages_per_day",
            used: today + 1,
            limit: metadata.maxMessagesPerDay,
            period: now / MessageDayCounter.millisecondsPerDay,
            logger: logger
        )
    }

    /// Refuses a write once the tenant holds its storage limit on disk.
    mutating func checkStorage(limits metadata: TenantMetadata, logger: Logger) throws {
        let limit = metadata.maxStorageBytes
        if limit > 0 && self.storageBytes >= limit {
            self.counters.rejected(.storage)
            throw TenantError(.quotaExceeded, "storage \(self.storageBytes)/\(limit)")
        }
        self.note("storage", used: self.storageBytes, limit: limit, period: 0, logger: logger)
    }

    /// Refuses a user past the limit, `users` being there already.
    mutating func admitUser(users: Int64, limits metadata: TenantMetadata, logger: Logger) throws {
        let limit = metadata.maxUsers
        if limit > 0 && users >= limit {
            self.counters.rejected(.users)
            throw TenantError(.quotaExceeded, "users \(users)/\(limit)")
        }
        try self.checkStorage(limits: metadata, logger: logger)
        self.note("users", used: users + 1, limit: limit, period: 0, logger: logger)
    }

    /// Logs once when a counter crosses 80 %, 90 % and 100 % of its limit (per day for daily limits).
    private mutating func note(_ name: String, used: Int64, limit: Int64, period: Int64, logger: Logger) {
        guard limit > 0, used > 0 else { return }
        // In floating point: neither factor can overflow, whatever the limits are.
        let percent = Int(min(1000, Double(used) * 100 / Double(limit)))
        let level = percent >= 100 ? 100 : (percent >= 90 ? 90 : (percent >= 80 ? 80 : 0))
        let key = "\(name)@\(period)"
        guard level > 0, level > (self.loggedLevels[key] ?? 0) else { return }
        self.loggedLevels[key] = level
        logger.warning(
            "tenant crossed \(level)% of its \(name) limit",
            metadata: ["event": "quota_crossed", "quota": "\(name)", "used": "\(used)", "limit": "\(limit)"]
        )
    }
}
