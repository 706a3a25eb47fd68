import TenantServer
import Testing

@testable import TenantEngine

/// The authorization rule, a pure function of role and action, checked against the table the
/// contract gives (docs/protocol.md, "Roles"), every cell written out.
@Suite("Access rule")
struct AccessRuleTests {
    // member, admin, owner, operator
    static let table: [(TenantAction, [Bool])] = [
        (.read, [true, true, true, true]),
        (.post, [true, true, true, true]),
        (.rotateOwnToken, [true, true, true, true]),
        (.listUsers, [false, true, true, true]),
        (.manageUser(target: .member), [false, true, true, true]),
        (.manageUser(target: .admin), [false, false, true, true]),
        (.manageUser(target: .owner), [false, false, true, true]),
        (.administerTenant, [false, false, false, true]),
    ]

    @Test func everyRoleAndActionAsTheContractSays() {
        #expect(Set(Self.table.map(\.0)) == Set(TenantAction.allCases), "the table covers every action")
        let roles: [Role?] = [.member, .admin, .owner, nil]
        for (action, allowed) in Self.table {
            for (role, expected) in zip(roles, allowed) {
                #expect(AccessRule.permits(role, action) == expected, "\(role?.rawValue ?? "operator") \(action)")
            }
        }
    }

    @Test func refusalsSayWhatIsNeeded() {
        #expect(AccessRule.refusal(.member, .listUsers).message == "this command needs the admin role")
        #expect(
            AccessRule.refusal(.admin, .manageUser(target: .admin)).message
                == "admins manage members only; this needs the owner role"
        )
        #expect(AccessRule.refusal(.admin, .administerTenant).message == "this command needs the owner role")
        #expect(AccessRule.refusal(.owner, .administerTenant).message == "this command is for the operator")
        #expect(AccessRule.refusal(.member, .administerTenant).kind == .forbidden)
    }
}

/// The engine's errors become the contract's codes in one function, every kind written out.
@Suite("Error mapping")
struct ErrorMappingTests {
    @Test func everyEngineErrorHasItsContractCode() {
        let table: [TenantError.Kind: String] = [
            .refused: "ERR", .credentialRevoked: "NOAUTH", .wrongCredentials: "WRONGPASS", .forbidden: "NOPERM",
            .notFound: "NOTFOUND", .suspended: "SUSPENDED", .alreadyExists: "EXISTS", .invalid: "INVALID",
            .quotaExceeded: "QUOTA", .tooLarge: "TOOBIG", .storageFailed: "IOERR", .unavailable: "LOADING",
            .migrated: "MIGRATED",
        ]
        #expect(Set(table.keys) == Set(TenantError.Kind.allCases))
        for (kind, code) in table { #expect(ReplyCode(kind).rawValue == code, "\(kind)") }
    }
}
