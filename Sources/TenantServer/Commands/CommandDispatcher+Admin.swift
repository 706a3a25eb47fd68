import Foundation
import RESP
import TenantEngine

extension CommandDispatcher {
    func user(_ arguments: Arguments, principal: Principal, session: inout Session) async throws -> RESPValue {
        let tenant = try session.contextTenant()
        switch arguments.keyword(0) {
        case "ADD":
            try arguments.expect(2...3, for: "user|add")
            let role = try arguments.count == 3 ? Self.role(arguments[2]) : .member
            return .bulkString(try await tenant.addUser(principal, name: arguments[1], role: role))
        case "DEL":
            try arguments.expect(2...2, for: "user|del")
            try await tenant.deleteUser(principal, name: arguments[1])
            return .ok
        case "ROLE":
            try arguments.expect(3...3, for: "user|role")
            try await tenant.setRole(principal, name: arguments[1], role: Self.role(arguments[2]))
            return .ok
        case "LIST":
            // `USER LIST [AFTER <name>] [LIMIT <n>]`: paged by name like ROOMS.
            let (after, limit) = try arguments.page(from: 1)
            return .array(
                try await tenant.listUsers(principal, after: after, limit: limit ?? EngineLimits.maxUsersPage).map {
                    user in
                    .array([.bulkString(user.name), .bulkString(user.role.rawValue), .integer(user.joinedAt)])
                }
            )
        case "TOKEN":
            try arguments.expect(2...2, for: "user|token")
            let token = try await tenant.rotateToken(principal, name: arguments[1])
            if case .user(let tenantID, let name, _) = principal, name == arguments[1] {
                // The connection that rotated its own token stays authenticated with the new one.
                session.principal = .user(tenantID: tenantID, name: name, tokenHash: Tokens.hash(token))
            }
            return .bulkString(token)
        default:
            throw CommandError("unknown subcommand '\(arguments[0].prefix(64))'. Try USER ADD|DEL|ROLE|LIST|TOKEN.")
        }
    }

    static func role(_ word: String) throws -> Role {
        guard let role = Role(wireValue: word) else { throw TenantError.invalid("role must be member, admin or owner") }
        return role
    }

    func tenantCommand(_ arguments: Arguments, principal: Principal) async throws -> RESPValue {
        guard case .operator = principal else {
            throw TenantError.noPermission("TENANT commands are for the operator")
        }
        switch arguments.keyword(0) {
        case "CREATE":
            return try await self.createTenant(arguments)
        case "GET":
            try arguments.expect(2...2, for: "tenant|get")
            return .map(self.fields(try await self.operatorTenant(arguments[1]).metadata))
        case "LIST":
            return try await self.listTenants(arguments)
        case "UPDATE":
            guard arguments.count >= 4, arguments.count % 2 == 0 else { throw CommandError.wrongArity("tenant|update") }
            let tenant = try await self.operatorTenant(arguments[1])
            let changes = stride(from: 2, to: arguments.count, by: 2).map { (arguments[$0], arguments[$0 + 1]) }
            return .map(self.fields(try await tenant.update(principal, changes)))
        case "SUSPEND", "RESUME":
            try arguments.expect(2...2, for: "tenant|\(arguments[0].lowercased())")
            let tenant = try await self.operatorTenant(arguments[1])
            _ = try await tenant.setSuspended(principal, arguments.keyword(0) == "SUSPEND")
            return .ok
        case "SNAPSHOT":
            try arguments.expect(3...3, for: "tenant|snapshot")
            let id = try await self.operatorTenantID(arguments[1])
            let snapshot = try await self.registry.snapshotTenant(id: id, destination: arguments[2])
            return .map([("path", .bulkString(snapshot.path)), ("lsn", .integer(Int64(snapshot.lsn)))])
        case "ATTACH":
            try arguments.expect(2...2, for: "tenant|attach")
            return .map(self.fields(try await self.registry.attachTenant(id: arguments[1])))
        case "DETACH":
            try arguments.expect(2...2, for: "tenant|detach")
            try await self.registry.detachTenant(id: try await self.operatorTenantID(arguments[1]))
            return .ok
        case "MOVE":
            // TENANT MOVE <id> REGION <name>
            try arguments.expect(4...4, for: "tenant|move")
            guard arguments.keyword(2) == "REGION" else { throw CommandError.syntax }
            let id = try await self.operatorTenantID(arguments[1])
            try await self.registry.moveTenant(id: id, region: arguments[3])
            return .ok
        case "MIGRATE":
            return try await self.migrate(arguments)
        case "RECEIVE":
            return try await self.receive(arguments)
        case "REOPEN":
            try arguments.expect(2...2, for: "tenant|reopen")
            guard let id = await self.registry.resolveAny(arguments[1]) else {
                throw TenantError.notFound("no tenant '\(arguments[1].prefix(64))'")
            }
            try await self.registry.reopenTenant(id: id)
            return .ok
        case "DELETE":
            try arguments.expect(3...3, for: "tenant|delete")
            guard arguments[1] == arguments[2] else {
                throw CommandError("TENANT DELETE takes the tenant id twice, as confirmation")
            }
            guard let id = await self.registry.resolveAny(arguments[1]), id == arguments[1] else {
                throw TenantError.notFound("no tenant with id '\(arguments[1].prefix(64))'")
            }
            try await self.registry.deleteTenant(id: id)
            return .ok
        default:
            throw CommandError(
                "unknown subcommand '\(arguments[0].prefix(64))'. "
                    + "Try TENANT CREATE|GET|LIST|UPDATE|SUSPEND|RESUME|DELETE|SIGNUP|SNAPSHOT|ATTACH|DETACH|REOPEN|MOVE|MIGRATE|RECEIVE."
            )
        }
    }

    /// TENANT CREATE <name> <subdomain> [PLAN p] [OWNER u] [REGION r].
    private func createTenant(_ arguments: Arguments) async throws -> RESPValue {
        guard arguments.count >= 3, arguments.count % 2 == 1 else { throw CommandError.wrongArity("tenant|create") }
        var plan: Plan?
        var owner = "owner"
        var region = ""
        var index = 3
        while index < arguments.count {
            switch arguments.keyword(index) {
            case "PLAN":
                guard let parsed = Plan(rawValue: arguments[index + 1].lowercased()) else {
                    throw TenantError.invalid("plan must be free, pro or enterprise")
                }
                plan = parsed
            case "OWNER":
                owner = arguments[index + 1]
            case "REGION":
                region = arguments[index + 1]
                guard self.registry.hasTenantDirectories else {
                    throw TenantError.invalid("REGION is for the database strategy")
                }
                guard self.registry.configuration.regions[region] != nil else {
                    throw TenantError.invalid("unknown region '\(region.prefix(32))'; regions: \(self.regionList)")
                }
            default:
                throw CommandError.syntax
            }
            index += 2
        }
        let created = try await self.registry.createTenant(
            name: arguments[1],
            subdomain: arguments[2],
            plan: plan,
            owner: owner,
            region: region
        )
        return self.createdReply(created)
    }

    /// The tenant an operator's TENANT command names, by id, subdomain or host.
    private func operatorTenant(_ reference: String) async throws -> Tenant {
        try await self.registry.tenant(id: try await self.operatorTenantID(reference))
    }

    private func operatorTenantID(_ reference: String) async throws -> String {
        guard let id = await self.registry.resolveAny(reference) else {
            throw TenantError.notFound("no tenant '\(reference.prefix(64))'")
        }
        return id
    }

    /// `TENANT LIST` (every tenant) or `TENANT LIST CURSOR <c> [COUNT <n>]` (a page: `[next, [tenants]]`).
    private func listTenants(_ arguments: Arguments) async throws -> RESPValue {
        try arguments.expect(1...5, for: "tenant|list")
        if arguments.count == 1 {
            return .array(await self.registry.listTenants().map { .map(self.fields($0)) })
        }
        var cursor: String?
        var count = 100
        var index = 1
        while index < arguments.count {
            guard index + 1 < arguments.count else { throw CommandError.syntax }
            switch arguments.keyword(index) {
            case "CURSOR": cursor = arguments[index + 1]
            case "COUNT":
                guard let value = Int(arguments[index + 1]), value > 0 else {
                    throw CommandError("value is not an integer or out of range")
                }
                count = min(value, 1000)
            default: throw CommandError.syntax
            }
            index += 2
        }
        let page = await self.registry.listTenants(after: cursor ?? "0", count: count)
        return .array([.bulkString(page.next), .array(page.tenants.map { .map(self.fields($0)) })])
    }

    /// TENANT SIGNUP name subdomain owner: no authentication, when self-signup is on.
    func signup(_ arguments: Arguments, session: Session) async throws -> RESPValue {
        try arguments.expect(4...4, for: "tenant|signup")
        let created = try await self.registry.signup(
            name: arguments[1],
            subdomain: arguments[2],
            owner: arguments[3],
            clientAddress: session.clientAddress
        )
        return self.createdReply(created)
    }

    func createdReply(_ created: CreatedTenant) -> RESPValue {
        .map(
            self.fields(created.metadata) + [
                ("owner", .bulkString(created.owner)), ("owner_token", .bulkString(created.ownerToken)),
            ]
        )
    }

    private static func settingsEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return encoder
    }

    /// Every field of the seed's Tenant, then its region.
    func fields(_ metadata: TenantMetadata) -> [(String, RESPValue)] {
        Self.fields(metadata, region: self.registry.region(of: metadata.tenantID))
    }

    /// Every field of the seed's Tenant, in its order, then `region` ("" for none).
    static func fields(_ metadata: TenantMetadata, region: String) -> [(String, RESPValue)] {
        let settings = (try? Self.settingsEncoder().encode(metadata.settings)).map {
            String(decoding: $0, as: UTF8.self)
        }
        return [
            ("tenant_id", .bulkString(metadata.tenantID)),
            ("name", .bulkString(metadata.name)),
            ("subdomain", .bulkString(metadata.subdomain)),
            ("plan", .bulkString(metadata.plan.rawValue)),
            ("max_users", .integer(metadata.maxUsers)),
            ("max_storage_bytes", .integer(metadata.maxStorageBytes)),
            ("max_messages_per_day", .integer(metadata.maxMessagesPerDay)),
            ("is_active", .integer(metadata.isActive ? 1 : 0)),
            ("is_suspended", .integer(metadata.isSuspended ? 1 : 0)),
            ("created_at", .integer(metadata.createdAt)),
            ("updated_at", .integer(metadata.updatedAt)),
            ("settings", .bulkString(settings ?? "{}")),
            ("region", .bulkString(region)),
        ]
    }

    /// The configured regions, for error messages.
    var regionList: String {
        let names = self.registry.regionNames
        return names.isEmpty ? "none (TENANT_REGIONS)" : names.joined(separator: ", ")
    }
}
