/// Every field of the seed's Tenant. Stored in the tenant's own log, so its directory is self-contained.
public struct TenantMetadata: Sendable, Hashable, Codable {
    public var tenantID: String
    public var name: String
    public var subdomain: String
    public var plan: Plan
    public var maxUsers: Int64
    public var maxStorageBytes: Int64
    public var maxMessagesPerDay: Int64
    public var isActive: Bool
    public var isSuspended: Bool
    /// Milliseconds since the Unix epoch.
    public var createdAt: Int64
    /// Milliseconds since the Unix epoch.
    public var updatedAt: Int64
    public var settings: [String: String]

    enum CodingKeys: String, CodingKey {
        case tenantID = "tenant_id"
        case name
        case subdomain
        case plan
        case maxUsers = "max_users"
        case maxStorageBytes = "max_storage_bytes"
        case maxMessagesPerDay = "max_messages_per_day"
        case isActive = "is_active"
        case isSuspended = "is_suspended"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case settings
    }

    /// Creates metadata for a new tenant with its plan's limits.
    public init(tenantID: String, name: String, subdomain: String, plan: Plan, limits: PlanLimits, now: Int64) {
        self.tenantID = tenantID
        self.name = name
        self.subdomain = subdomain
        self.plan = plan
        self.maxUsers = limits.maxUsers
        self.maxStorageBytes = limits.maxStorageBytes
        self.maxMessagesPerDay = limits.maxMessagesPerDay
        self.isActive = true
        self.isSuspended = false
        self.createdAt = now
        self.updatedAt = now
        self.settings = [:]
    }

    /// True when the tenant serves its users.
    public var isServing: Bool { self.isActive && !self.isSuspended }
}
