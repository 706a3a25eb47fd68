/// What a principal asks of a tenant, as the authorization rule sees it.
public enum TenantAction: Sendable, Hashable, CaseIterable {
    /// HISTORY, ROOMS, USAGE, WHOAMI, SUBSCRIBE.
    case read
    /// POST.
    case post
    /// USER ROTATE of one's own token.
    case rotateOwnToken
    /// USER LIST.
    case listUsers
    /// USER ADD, DEL, ROLE and another's ROTATE, of a user whose role (the higher of the old and
    /// the new one) is `target`.
    case manageUser(target: Role)
    /// TENANT UPDATE, SUSPEND, RESUME.
    case administerTenant

    public static let allCases: [TenantAction] =
        [.read, .post, .rotateOwnToken, .listUsers, .administerTenant] + Role.allCases.map { .manageUser(target: $0) }
}

/// The authorization rule: a pure function of a role and an action. Members read, post and
/// rotate their own token; admins also list users and manage members; owners manage everyone;
/// the tenant itself (limits, plan, suspension) is the operator's alone.
public enum AccessRule {
    /// Whether `role` may take `action`.
    /// - Parameter role: a user's role; nil for the operator, who may do anything.
    public static func permits(_ role: Role?, _ action: TenantAction) -> Bool {
        guard let role else { return true }
        switch action {
        case .read, .post, .rotateOwnToken: return true
        case .listUsers: return role >= .admin
        case .manageUser(let target): return role == .owner || (role == .admin && target == .member)
        case .administerTenant: return false
        }
    }

    /// Why `role` may not take `action`: the refusal a client reads.
    static func refusal(_ role: Role, _ action: TenantAction) -> TenantError {
        switch action {
        case .administerTenant where role == .owner:
            return TenantError.noPermission("this command is for the operator")
        case .administerTenant:
            return TenantError.noPermission("this command needs the owner role")
        case .manageUser where role == .admin:
            return TenantError.noPermission("admins manage members only; this needs the owner role")
        default:
            return TenantError.noPermission("this command needs the admin role")
        }
    }
}
