import TenantEngine

/// The reply codes of the wire contract (docs/protocol.md, "Errors").
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
    case migrated = "MIGRATED"

    /// The contract's code of an engine error: the one mapping from the engine's terms to the wire's.
    public init(_ kind: TenantError.Kind) {
        switch kind {
        case .refused: self = .err
        case .credentialRevoked: self = .noAuth
        case .wrongCredentials: self = .wrongPass
        case .forbidden: self = .noPerm
        case .notFound: self = .notFound
        case .suspended: self = .suspended
        case .alreadyExists: self = .exists
        case .invalid: self = .invalid
        case .quotaExceeded: self = .quota
        case .tooLarge: self = .tooBig
        case .storageFailed: self = .ioError
        case .unavailable: self = .loading
        case .migrated: self = .migrated
        }
    }
}

/// An error the server itself answers with: the parser's `PROTO` (the connection closes) and
/// `TOOBIG` (an argument over `proto-max-bulk-len`, skipped), `NOAUTH` before AUTH, `NOTENANT`
/// without a tenant context, `ERR` for a bad HELLO.
struct ServerError: Error {
    let code: ReplyCode
    let message: String

    init(_ code: ReplyCode, _ message: String) {
        self.code = code
        self.message = message
    }
}
