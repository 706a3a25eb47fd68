/// The reply codes of the wire contract an engine error maps to.
public enum ReplyCode: String, Sendable, Hashable, CaseIterable {
    case err = "ERR"
    case noAuth = "NOAUTH"
    case wrongPass = "WRONGPASS"
    case noPerm = "NOPERM"
    case noTenant = "NOTENANT"
    case notFound = "NOTFOUND"
    case suspended = "SUSPENDED"
    case exists = "EXISTS"
    case invalid = "INVALID"
    case quota = "QUOTA"
    case tooBig = "TOOBIG"
    case ioError = "IOERR"
    case loading = "LOADING"
    case proto = "PROTO"
}

/// An error a client's command can meet in the engine; it carries the contract's reply code.
public struct TenantError: Error, Hashable, CustomStringConvertible, Sendable {
    /// The contract's code for this error.
    public let code: ReplyCode
    /// The human part of the reply.
    public let message: String

    /// Creates an error with a code and a message.
    public init(_ code: ReplyCode, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The one message for every failed authentication, so a caller learns nothing of which part was wrong.
    public static let wrongPass = TenantError(.wrongPass, "invalid username-password pair or user is disabled.")
    /// The connection's credential was revoked or rotated.
    public static let credentialRevoked = TenantError(.noAuth, "credential no longer valid; authenticate again")
    /// The role does not allow the command.
    public static func noPermission(_ what: String) -> TenantError { TenantError(.noPerm, what) }
    /// The tenant is suspended or inactive.
    public static let suspended = TenantError(.suspended, "tenant is suspended")
    /// A name breaks its rule.
    public static func invalid(_ what: String) -> TenantError { TenantError(.invalid, what) }
    /// Something does not exist.
    public static func notFound(_ what: String) -> TenantError { TenantError(.notFound, what) }
    /// A write could not be made durable.
    public static func ioError(_ what: String) -> TenantError { TenantError(.ioError, what) }

    public var description: String { "\(self.code.rawValue) \(self.message)" }
}
