/// How tenants are kept apart on disk and in memory (`TENANT_ISOLATION_STRATEGY`).
public enum IsolationStrategy: String, Sendable, CaseIterable {
    /// A directory and a log per tenant, an executor per tenant: the default.
    case database
    /// An executor per tenant, one log for all in `data/shared/`.
    case schema
    /// One executor and one log for all tenants, the tenant id as discriminator.
    case shared
}

/// Which forms of tenant reference AUTH, USE and room paths accept (`TENANT_ID_SOURCE`).
public enum TenantIDSource: String, Sendable, CaseIterable {
    /// A subdomain (`acme`) or a host name (`acme.chat.example.com`).
    case subdomain
    /// A tenant id (`3f9a1c2e`), as the seed's `X-Tenant-ID` header carries it.
    case header
    /// The path form of a room, `/tenant/<id>/<room>`.
    case path
}
