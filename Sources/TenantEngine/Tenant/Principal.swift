/// Who sends a command.
public enum Principal: Sendable, Hashable {
    /// The operator (`AUTH admin <token>`).
    case `operator`
    /// A user of one tenant, with the hash of the token it authenticated with: a rotated or
    /// deleted credential stops working on connections already open.
    case user(tenantID: String, name: String, tokenHash: [UInt8])

    /// The name shown by WHOAMI and recorded as a message's author.
    public var displayName: String {
        switch self {
        case .operator: return "admin"
        case .user(_, let name, _): return name
        }
    }
}

/// A POST accepted into the log's batch, waiting for it to be durable.
public struct PostTicket: Sendable, Hashable {
    /// The message's seq in its room.
    public let seq: UInt64
    /// The record's lsn in the tenant's log.
    public let lsn: UInt64
}
