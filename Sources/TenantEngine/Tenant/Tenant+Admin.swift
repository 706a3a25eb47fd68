import Logging

/// What USAGE reports.
public struct TenantUsage: Sendable, Hashable {
    public var plan: Plan
    public var users: Int64
    public var maxUsers: Int64
    public var storageBytes: Int64
    public var maxStorageBytes: Int64
    public var messagesToday: Int64
    public var maxMessagesPerDay: Int64
}

extension Tenant {
    // MARK: - Quotas

    /// The tenant's counters against its limits. Any user of the tenant may read them.
    public func usage(_ principal: Principal) throws -> TenantUsage {
        _ = try self.authorize(principal, .read)
        let metadata = self.metadata
        return TenantUsage(
            plan: metadata.plan,
            users: Int64(self.membership.users.count),
            maxUsers: metadata.maxUsers,
            storageBytes: self.quota.storageBytes,
            maxStorageBytes: metadata.maxStorageBytes,
            messagesToday: self.quota.messages(onDayOf: self.configuration.clock()),
            maxMessagesPerDay: metadata.maxMessagesPerDay
        )
    }

    // MARK: - Metadata (operator)

    /// Changes tenant fields: `name`, `plan` (which brings that plan's limits), `max_users`,
    /// `max_storage_bytes`, `max_messages_per_day`, `is_active`, `settings.KEY`.
    /// - Returns: the new metadata, once durable.
    /// - Throws: NOPERM for users; INVALID for an unknown field or a bad value.
    public func update(_ principal: Principal, _ changes: [(String, String)]) async throws -> TenantMetadata {
        try self.requireOperator(principal)
        var metadata = self.metadata
        // A plan change first, so limits set in the same command win over the plan's.
        for (field, value) in changes where field.lowercased() == "plan" {
            guard let plan = Plan(rawValue: value.lowercased()) else {
                throw TenantError.invalid("plan must be free, pro or enterprise")
            }
            let limits = self.configuration.limits(for: plan)
            metadata.plan = plan
            metadata.maxUsers = limits.maxUsers
            metadata.maxStorageBytes = limits.maxStorageBytes
            metadata.maxMessagesPerDay = limits.maxMessagesPerDay
        }
        for (field, value) in changes {
            let key = field.lowercased()
            switch key {
            case "plan":
                continue
            case "name":
                guard Names.isValidTenantName(value) else {
                    throw TenantError.invalid("tenant name must be 1-200 bytes of UTF-8 without control characters")
                }
                metadata.name = value
            case "max_users": metadata.maxUsers = try Self.limit(value, field: key, max: EngineLimits.maxUsersLimit)
            case "max_storage_bytes":
                metadata.maxStorageBytes = try Self.limit(value, field: key, max: EngineLimits.maxStorageBytesLimit)
            case "max_storage_gb":
                let gigabytes = try Self.limit(
                    value,
                    field: key,
                    max: EngineLimits.maxStorageBytesLimit / PlanLimits.gigabyte
                )
                metadata.maxStorageBytes = gigabytes * PlanLimits.gigabyte
            case "max_messages_per_day":
                metadata.maxMessagesPerDay = try Self.limit(value, field: key, max: EngineLimits.maxMessagesPerDayLimit)
            case "is_active": metadata.isActive = try Self.flag(value, field: key)
            case "is_suspended": metadata.isSuspended = try Self.flag(value, field: key)
            case _ where key.hasPrefix("settings.") && key.count > "settings.".count:
                let name = String(field.dropFirst("settings.".count))
                try Self.validateSetting(name, value)
                if value.isEmpty { metadata.settings[name] = nil } else { metadata.settings[name] = value }
                guard metadata.settings.count <= EngineLimits.maxSettings else {
                    throw TenantError.invalid("at most 256 settings")
                }
            default:
                throw TenantError.invalid(
                    "unknown or read-only field '\(field.prefix(64))'; fields: name, plan, max_users, "
                        + "max_storage_bytes, max_messages_per_day, is_active, settings.KEY"
                )
            }
        }
        return try await self.writeMetadata(metadata)
    }

    /// Suspends (true) or resumes (false) the tenant: its users get SUSPENDED for everything.
    public func setSuspended(_ principal: Principal, _ suspended: Bool) async throws -> TenantMetadata {
        try self.requireOperator(principal)
        var metadata = self.metadata
        metadata.isSuspended = suspended
        let changed = try await self.writeMetadata(metadata)
        self.logger.notice(
            suspended ? "tenant suspended" : "tenant resumed",
            metadata: ["event": .string(suspended ? "tenant_suspended" : "tenant_resumed")]
        )
        return changed
    }

    private func writeMetadata(_ changed: TenantMetadata) async throws -> TenantMetadata {
        var metadata = changed
        metadata.updatedAt = max(self.configuration.clock(), self.metadata.updatedAt)
        try await self.write(.metadata(metadata))
        try await self.onMetadataChange(metadata)
        return self.metadata
    }

    func requireOperator(_ principal: Principal) throws {
        _ = try self.authorize(principal, .administerTenant)
    }

    /// A setting as TENANT UPDATE takes it (an empty value removes it).
    static func validateSetting(_ name: String, _ value: String) throws {
        guard name.utf8.count <= 128, value.utf8.count <= 4096 else {
            throw TenantError.invalid("a setting's key is at most 128 bytes, its value 4096")
        }
        if !value.isEmpty { try BackupPolicy.validate(setting: name, value: value) }
    }

    /// Settings as TENANT UPDATE could have made them (an import's).
    static func validateSettings(_ settings: [String: String]) throws {
        guard settings.count <= EngineLimits.maxSettings else { throw TenantError.invalid("at most 256 settings") }
        for (name, value) in settings {
            guard !name.isEmpty, !value.isEmpty else { throw TenantError.invalid("a setting needs a key and a value") }
            try Self.validateSetting(name, value)
        }
    }

    private static func limit(_ value: String, field: String, max: Int64) throws -> Int64 {
        guard let number = Int64(value), number >= 0, number <= max else {
            throw TenantError.invalid("\(field) must be an integer from 0 (no limit) to \(max)")
        }
        return number
    }

    private static func flag(_ value: String, field: String) throws -> Bool {
        switch value.lowercased() {
        case "1", "true", "yes": return true
        case "0", "false", "no": return false
        default: throw TenantError.invalid("\(field) must be 1 or 0")
        }
    }
}
