/// An error a client's command can meet in the engine. The engine knows nothing of the wire:
/// the server maps each kind to its contract's reply code in one place.
public struct TenantError: Error, Hashable, CustomStringConvertible, Sendable {
    /// What went wrong, in the engine's terms.
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        /// A request or a setting the engine cannot take (a data directory of another strategy,
        /// an operator token too short).
        case refused
        /// The credential a connection authenticated with was revoked or rotated.
        case credentialRevoked
        /// A user name and token that do not match.
        case wrongCredentials
        /// The role does not allow the action.
        case forbidden
        /// No such tenant, user or directory.
        case notFound
        /// The tenant is suspended or inactive.
        case suspended
        /// The tenant, subdomain or user exists already.
        case alreadyExists
        /// An argument breaks its rule.
        case invalid
        /// A plan limit or a rate was reached.
        case quotaExceeded
        /// A message over the size limit.
        case tooLarge
        /// The log could not make a write durable.
        case storageFailed
        /// Not serving now (starting, stopping, closed, busy): retry.
        case unavailable
        /// The tenant was handed to another server (`TENANT MIGRATE`); the message is
        /// `<tenant-id> <host>:<port>`.
        case migrated
    }

    /// What went wrong.
    public let kind: Kind
    /// The human part of the reply.
    public let message: String

    /// Creates an error of a kind with a message.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The one message for every failed authentication, so a caller learns nothing of which part was wrong.
    public static let wrongPass = TenantError(.wrongCredentials, "invalid username-password pair or user is disabled.")
    /// The connection's credential was revoked or rotated.
    public static let credentialRevoked = TenantError(
        .credentialRevoked,
        "credential no longer valid; authenticate again"
    )
    /// The role does not allow the command.
    public static func noPermission(_ what: String) -> TenantError { TenantError(.forbidden, what) }
    /// The tenant is suspended or inactive.
    public static let suspended = TenantError(.suspended, "tenant is suspended")
    /// A name breaks its rule.
    public static func invalid(_ what: String) -> TenantError { TenantError(.invalid, what) }
    /// Something does not exist.
    public static func notFound(_ what: String) -> TenantError { TenantError(.notFound, what) }
    /// A write could not be made durable.
    public static func ioError(_ what: String) -> TenantError { TenantError(.storageFailed, what) }

    public var description: String { "\(self.kind.rawValue): \(self.message)" }
}
