/// A user's role in a tenant, from least to most power.
public enum Role: String, Sendable, Codable, CaseIterable, Comparable {
    /// Posts, reads and subscribes.
    case member
    /// Also manages members.
    case admin
    /// Also manages admins and owners.
    case owner

    private var rank: Int {
        switch self {
        case .member: return 0
        case .admin: return 1
        case .owner: return 2
        }
    }

    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rank < rhs.rank }

    /// The role a wire value names, case-insensitively.
    public init?(wireValue: String) {
        self.init(rawValue: wireValue.lowercased())
    }
}

/// A user of a tenant. The token is kept only as its SHA-256.
public struct User: Sendable, Hashable {
    public var name: String
    public var role: Role
    public var tokenHash: [UInt8]
    /// Milliseconds since the Unix epoch.
    public var joinedAt: Int64

    /// Creates a user.
    public init(name: String, role: Role, tokenHash: [UInt8], joinedAt: Int64) {
        self.name = name
        self.role = role
        self.tokenHash = tokenHash
        self.joinedAt = joinedAt
    }
}
