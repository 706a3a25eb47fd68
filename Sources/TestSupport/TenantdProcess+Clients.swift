/// A reply other than the one a helper needs.
public struct UnexpectedReply: Error, CustomStringConvertible {
    /// The command and what it got.
    public var description: String

    /// Creates the error.
    public init(description: String) {
        self.description = description
    }
}

extension RESPTestClient {
    /// TENANT CREATE through an operator connection.
    /// - Returns: the new tenant's id and its owner's token.
    public func createTenant(
        name: String,
        subdomain: String,
        plan: String = "free",
        owner: String = "alice"
    ) throws -> (id: String, token: String) {
        let reply = try self.call("TENANT", "CREATE", name, subdomain, "PLAN", plan, "OWNER", owner)
        guard let fields = reply.fields, let id = fields["tenant_id"]?.string, let token = fields["owner_token"]?.string
        else { throw UnexpectedReply(description: "TENANT CREATE \(subdomain) replied \(reply)") }
        return (id, token)
    }
}

extension TenantdProcess {
    /// A connection authenticated as the operator.
    public func operatorClient() throws -> RESPTestClient {
        try self.login("admin", self.adminToken())
    }

    /// A connection authenticated with AUTH `user` `token`.
    public func login(_ user: String, _ token: String) throws -> RESPTestClient {
        let client = try self.client()
        let reply = try client.call("AUTH", user, token)
        guard reply == .simple("OK") else { throw UnexpectedReply(description: "AUTH \(user) replied \(reply)") }
        return client
    }
}
