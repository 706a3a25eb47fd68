import Logging
import TenantEngine
import WAL

/// The engine as the Swift tests build it: one definition of a test registry and of a tenant's
/// owner, which every suite uses instead of a copy of its own (issue 22, point 5). A suite's
/// own needs (a failing disk, small segments, a strategy) go in `adjust`.
public enum EngineFixtures {
    /// The operator token of a fixture registry.
    public static let operatorToken = "operator-token-0123456789abcdef-0123"

    /// A configuration on `path`: `fsync`, the operator token, new tenants on `defaultPlan`
    /// (nil: the engine's own default, the free plan with its quotas), then `adjust`.
    public static func configuration(
        _ path: String,
        fsync: FsyncPolicy = .always,
        defaultPlan: Plan? = .enterprise,
        _ adjust: (inout EngineConfiguration) -> Void = { _ in }
    ) -> EngineConfiguration {
        var configuration = EngineConfiguration(dataDirectory: path, fsync: fsync)
        configuration.adminToken = Self.operatorToken
        if let defaultPlan { configuration.defaultPlan = defaultPlan }
        adjust(&configuration)
        return configuration
    }

    /// A registry over `configuration`, bootstrapped, logging errors only.
    public static func registry(_ configuration: EngineConfiguration) async throws -> TenantRegistry {
        let registry = TenantRegistry(configuration: configuration, logger: Logger.quiet)
        try await registry.bootstrap()
        return registry
    }

    /// A registry on `path` (``configuration(_:fsync:defaultPlan:_:)``), bootstrapped.
    public static func registry(
        _ path: String,
        fsync: FsyncPolicy = .always,
        defaultPlan: Plan? = .enterprise,
        _ adjust: (inout EngineConfiguration) -> Void = { _ in }
    ) async throws -> TenantRegistry {
        try await Self.registry(Self.configuration(path, fsync: fsync, defaultPlan: defaultPlan, adjust))
    }

    /// Creates a tenant under `subdomain` owned by `user`, and signs the owner in.
    /// - Returns: the tenant, its owner's principal, and what creation answered.
    public static func owner(
        _ registry: TenantRegistry,
        subdomain: String,
        plan: Plan? = nil,
        user: String = "alice"
    ) async throws -> (Tenant, Principal, CreatedTenant) {
        let created = try await registry.createTenant(
            name: "Org \(subdomain)",
            subdomain: subdomain,
            plan: plan,
            owner: user
        )
        let tenant = try await registry.tenant(id: created.metadata.tenantID)
        let principal = try await tenant.authenticate(user: user, token: created.ownerToken)
        return (tenant, principal, created)
    }
}
