/// A tenant's metadata and users: what authentication and user and metadata admin read and change.
struct Membership: Sendable {
    private(set) var metadata: TenantMetadata
    private(set) var users: [String: User]
    /// The user names in order, for paging (made again after a user is added or removed).
    private var sortedNames: [String]?

    init(metadata: TenantMetadata, users: [String: User]) {
        self.metadata = metadata
        self.users = users
    }

    /// Applies a metadata or user record (messages are the message store's).
    mutating func apply(_ record: TenantRecord) {
        switch record {
        case .metadata(let metadata): self.metadata = metadata
        case .userPut(let user):
            // A new name changes the order USER LIST pages by; a new role or token does not.
            if self.users.updateValue(user, forKey: user.name) == nil { self.sortedNames = nil }
        case .userDelete(let name):
            if self.users.removeValue(forKey: name) != nil { self.sortedNames = nil }
        case .message, .tenantDeleted: break
        }
    }

    /// The user a token authenticates, compared in constant time.
    func user(named name: String, tokenHash: [UInt8]) -> User? {
        guard let user = self.users[name], Tokens.constantTimeEqual(user.tokenHash, tokenHash) else { return nil }
        return user
    }

    /// True unless `user` is the last owner.
    func keepsAnOwner(removing user: User) -> Bool {
        user.role != .owner || self.users.values.contains { $0.role == .owner && $0.name != user.name }
    }

    /// Every user, by name.
    var sortedUsers: [User] { self.users.values.sorted { $0.name < $1.name } }

    /// At most `limit` users whose names come after `after` (nil: from the first), by name.
    mutating func users(after: String?, limit: Int) -> [User] {
        let names: [String]
        if let sortedNames {
            names = sortedNames
        } else {
            names = self.users.keys.sorted()
            self.sortedNames = names
        }
        var low = 0
        if let after {
            // The first name past `after`.
            var high = names.count
            while low < high {
                let middle = (low + high) / 2
                if names[middle] <= after { low = middle + 1 } else { high = middle }
            }
        }
        let end = min(names.count, low + max(0, limit))
        return names[low..<end].compactMap { self.users[$0] }
    }
}
