extension Tenant {
    /// Adds a user.
    /// - Parameters:
    ///   - principal: an owner (any role), an admin (members only) or the operator.
    ///   - name: a valid, unused user name.
    ///   - role: the new user's role.
    /// - Returns: the user's token, shown this once.
    /// - Throws: ``TenantError`` (INVALID, EXISTS, NOPERM, IOERR).
    public func addUser(_ principal: Principal, name: String, role: Role) async throws -> String {
        try self.checkManage(principal, targetRole: role)
        guard Names.isValidUserName(name) else {
            throw TenantError.invalid("user name must be 1-64 bytes of [A-Za-z0-9._-]")
        }
        guard self.membership.users[name] == nil else {
            throw TenantError(.alreadyExists, "user '\(name)' already exists")
        }
        try self.checkWritable()
        try self.quota.admitUser(
            users: Int64(self.membership.users.count),
            limits: self.metadata,
            logger: self.logger
        )
        let token = Tokens.generate()
        let user = User(name: name, role: role, tokenHash: Tokens.hash(token), joinedAt: self.configuration.clock())
        try await self.write(.userPut(user))
        return token
    }

    /// Removes a user; the last owner cannot be removed.
    public func deleteUser(_ principal: Principal, name: String) async throws {
        let user = try self.existingUser(name)
        try self.checkManage(principal, targetRole: user.role)
        try self.checkKeepsAnOwner(removing: user)
        try await self.write(.userDelete(name))
    }

    /// Changes a user's role; the last owner cannot be demoted.
    public func setRole(_ principal: Principal, name: String, role: Role) async throws {
        var user = try self.existingUser(name)
        try self.checkManage(principal, targetRole: max(user.role, role))
        if role != .owner { try self.checkKeepsAnOwner(removing: user) }
        user.role = role
        try await self.write(.userPut(user))
    }

    /// Gives a user a new token; the old one stops working at once. Every user may rotate their own.
    /// - Returns: the new token, shown this once.
    public func rotateToken(_ principal: Principal, name: String) async throws -> String {
        var user = try self.existingUser(name)
        if case .user(_, let own, _) = principal, own == name {
            _ = try self.authorize(principal, .rotateOwnToken)
        } else {
            try self.checkManage(principal, targetRole: user.role)
        }
        let token = Tokens.generate()
        user.tokenHash = Tokens.hash(token)
        try await self.write(.userPut(user))
        return token
    }

    /// Users by name, a page at a time: at most `limit` (and ``maxUsersPage``) after `after`.
    public func listUsers(
        _ principal: Principal,
        after: String? = nil,
        limit: Int = EngineLimits.maxUsersPage
    ) throws
        -> [User]
    {
        _ = try self.authorize(principal, .listUsers)
        return self.membership.users(after: after, limit: min(limit, EngineLimits.maxUsersPage))
    }

    /// Appends a user or metadata change, applies it in actor order and waits until it is durable;
    /// a change of credentials is acknowledged only once the registry's keys (and so the next
    /// start) know it.
    func write(_ record: TenantRecord) async throws {
        var previous: User?
        switch record {
        case .userPut(let user): previous = self.membership.users[user.name]
        case .userDelete(let name): previous = self.membership.users[name]
        case .metadata, .message, .tenantDeleted: break
        }
        let lsn = try self.append(record)
        self.membership.apply(record)
        self.publishGauges()
        try await self.waitDurable(lsn)
        if let change = CredentialChange.of(record, previous: previous) {
            try await self.onCredentialChange(self.id, change)
        }
    }

    private func existingUser(_ name: String) throws -> User {
        guard let user = self.membership.users[name] else { throw TenantError.notFound("no user '\(name)'") }
        return user
    }

    /// Owners manage everyone, admins manage members, members manage no one (``AccessRule``).
    private func checkManage(_ principal: Principal, targetRole: Role) throws {
        _ = try self.authorize(principal, .manageUser(target: targetRole))
    }

    private func checkKeepsAnOwner(removing user: User) throws {
        guard self.membership.keepsAnOwner(removing: user) else {
            throw TenantError.invalid("a tenant keeps at least one owner")
        }
    }
}
