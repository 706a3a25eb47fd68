/// A user's credential as the registry keeps it for tenants that are not open: 64 bits derived
/// from the user's name and the SHA-256 of its token, enough to refuse a wrong token without
/// opening the tenant (no file, no descriptor, no memory spent on a guess).
///
/// The key is a filter, not the proof: a token that matches a key still has the open tenant
/// compare its full hash in constant time. A guesser who does not know a stored hash hits a key
/// by chance once in 2^64 tries per user. The keys are kept in the catalog file, so a restart
/// knows them without opening any tenant.
public struct CredentialKey: Hashable, Sendable {
    public let value: UInt64

    init(value: UInt64) { self.value = value }

    /// The key of a user name and a token's SHA-256.
    public init(user: String, tokenHash: [UInt8]) {
        // A stored hash is 32 bytes (the decoders refuse any other); a shorter one, which no
        // token matches, still makes a key rather than a trap.
        var prefix: UInt64 = 0
        for index in 0..<min(8, tokenHash.count) { prefix |= UInt64(tokenHash[index]) << (8 * UInt64(index)) }
        // FNV-1a of the name: the same token under another name is another key.
        var name: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in user.utf8 {
            name ^= UInt64(byte)
            name &*= 0x0000_0100_0000_01b3
        }
        self.value = prefix ^ name
    }

    /// The key of a stored user.
    init(_ user: User) { self.init(user: user.name, tokenHash: user.tokenHash) }
}

/// A change of one tenant's credentials: the key a user had before and the one it has now.
struct CredentialChange: Sendable, Equatable {
    var removed: CredentialKey?
    var added: CredentialKey?

    /// The change a user or deletion record makes, given the user it replaces.
    static func of(_ record: TenantRecord, previous: User?) -> CredentialChange? {
        switch record {
        case .userPut(let user):
            let old = previous.map(CredentialKey.init)
            let new = CredentialKey(user)
            return old == new ? nil : CredentialChange(removed: old, added: new)
        case .userDelete:
            return previous.map { CredentialChange(removed: CredentialKey($0), added: nil) }
        case .metadata, .message, .tenantDeleted:
            return nil
        }
    }
}
