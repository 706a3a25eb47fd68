extension TenantRegistry {
    /// The tenant every connection works in without naming one: `default` in single-tenant mode
    /// (`MULTI_TENANCY_ENABLED=false`), none otherwise.
    public nonisolated var impliedTenantID: String? {
        self.configuration.multiTenancy ? nil : EngineConfiguration.defaultTenantID
    }

    /// The tenant a user's AUTH names: `user@<reference>` by id, subdomain or host name, a plain
    /// user name in single-tenant mode; nil when it names none this server serves.
    public func tenantID(forUser reference: String?) -> String? {
        guard let reference else { return self.impliedTenantID }
        guard let id = self.resolve(reference) else { return nil }
        return self.impliedTenantID.map { $0 == id ? id : nil } ?? id
    }

    /// The tenant whose subdomain is `label` (a TLS server name's first label), if any.
    public func tenantID(forSubdomain label: String) -> String? {
        self.catalog.idBySubdomain[label.lowercased()] ?? self.migrations.departedTenant(subdomain: label.lowercased())
    }

    /// Refuses a tenant id outside single-tenant mode's one tenant.
    /// - Throws: NOTFOUND.
    public func checkServed(id: String) throws {
        if let implied = self.impliedTenantID, id != implied {
            throw TenantError.notFound("single-tenant mode serves the tenant '\(implied)' only")
        }
    }

    /// The tenant the operator's USE names: resolved in every reference form `TENANT_ID_SOURCE`
    /// allows, or, with `TENANT_AUTO_PROVISION=true`, an unknown well-formed id created.
    /// - Returns: the tenant and its id.
    /// - Throws: NOTFOUND for a reference that names no tenant.
    public func tenantForOperator(reference: String) async throws -> (Tenant, String) {
        if let id = self.resolve(reference) {
            try self.checkServed(id: id)
            return (try await self.tenant(id: id), id)
        }
        if self.configuration.autoProvision, self.impliedTenantID == nil,
            self.configuration.idSources.contains(.header),
            Names.isValidTenantID(reference)
        {
            return (try await self.tenantForOperator(id: reference), reference)
        }
        throw TenantError.notFound("no tenant '\(reference.prefix(64))'")
    }

    /// Whether a tenant's user may USE `reference`: only in single-tenant mode, for the one tenant.
    public func userMayUse(_ reference: String) -> Bool {
        guard let implied = self.impliedTenantID else { return false }
        return self.resolve(reference) == implied
    }
}
