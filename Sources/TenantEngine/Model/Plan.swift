/// A tenant's plan: a name and the limits it brings. A limit of 0 means none.
public enum Plan: String, Sendable, Codable, CaseIterable {
    case free
    case pro
    case enterprise

    /// The plan's built-in limits (the seed's Tenant defaults for `free`).
    public var defaultLimits: PlanLimits {
        switch self {
        case .free: return PlanLimits(maxUsers: 10, maxStorageBytes: 5 * PlanLimits.gigabyte, maxMessagesPerDay: 1_000)
        case .pro:
            return PlanLimits(maxUsers: 100, maxStorageBytes: 100 * PlanLimits.gigabyte, maxMessagesPerDay: 100_000)
        case .enterprise: return PlanLimits(maxUsers: 0, maxStorageBytes: 0, maxMessagesPerDay: 0)
        }
    }
}

/// The limits of a plan or a tenant; 0 is no limit.
public struct PlanLimits: Sendable, Hashable, Codable {
    /// Bytes in a gigabyte, as the seed's `max_storage_gb` counts them.
    public static let gigabyte: Int64 = 1 << 30

    /// The most users.
    public var maxUsers: Int64
    /// The most bytes on disk.
    public var maxStorageBytes: Int64
    /// The most messages per UTC day.
    public var maxMessagesPerDay: Int64

    /// Creates limits.
    public init(maxUsers: Int64, maxStorageBytes: Int64, maxMessagesPerDay: Int64) {
        self.maxUsers = maxUsers
        self.maxStorageBytes = maxStorageBytes
        self.maxMessagesPerDay = maxMessagesPerDay
    }
}
