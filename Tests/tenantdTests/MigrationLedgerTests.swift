import Testing

@testable import TenantEngine

/// Issue 22, point 2: the migration's state machines on both sides, as values, every transition
/// and every refusal, without a disk or a peer (`MigrationTransitionTests` runs them through two
/// registries).
@Suite("Migration ledger")
struct MigrationLedgerTests {
    typealias Phase = MigrationLedger.SourcePhase
    typealias Event = MigrationLedger.SourceEvent

    static let phases: [Phase] = [
        .copying, .paused, .prepared, .decided, .undecided, .abandoned, .committed, .refused,
    ]
    static let events: [Event] = [
        .pause, .prepared, .decided, .failed(undone: true), .failed(undone: false), .confirmed, .refused,
    ]

    @Test func theSourceTakesExactlyItsTransitions() {
        let allowed: [String: Phase] = [
            "copying pause": .paused,
            "copying failed(undone: true)": .abandoned,
            "copying failed(undone: false)": .abandoned,
            "paused prepared": .prepared,
            "paused failed(undone: true)": .abandoned,
            "paused failed(undone: false)": .abandoned,
            "prepared decided": .decided,
            // After PREPARE, giving up needs the marker known absent; else nobody serves it.
            "prepared failed(undone: true)": .abandoned,
            "prepared failed(undone: false)": .undecided,
            "decided confirmed": .committed,
            "decided refused": .refused,
            // No answer to COMMIT: still decided, asked again.
            "decided failed(undone: true)": .decided,
            "decided failed(undone: false)": .decided,
        ]
        var taken = 0
        for phase in Self.phases {
            for event in Self.events {
                let key = "\(phase) \(event)"
                #expect(MigrationLedger.next(phase, on: event) == allowed[key], "\(key)")
                if allowed[key] != nil { taken += 1 }
            }
        }
        #expect(taken == allowed.count)
        // The ends are ends: nothing leaves undecided, abandoned, committed or refused.
        for end in [Phase.undecided, .abandoned, .committed, .refused] {
            #expect(Self.events.allSatisfy { MigrationLedger.next(end, on: $0) == nil }, "\(end)")
        }
    }

    @Test func departuresAreFoundByIdAndSubdomainUntilForgotten() {
        var ledger = MigrationLedger()
        let departure = Departure(
            id: "t1",
            migration: "ab",
            target: "h:1",
            subdomain: "acme",
            token: "",
            directory: "/d/tenant_t1",
            committed: false,
            at: 5
        )
        #expect(!ledger.hasDepartures)
        ledger.depart(departure)
        #expect(ledger.departure("t1")?.target == "h:1")
        #expect(ledger.departedTenant(subdomain: "acme") == "t1")
        // Confirmed once, by its own migration only.
        let byAnother = ledger.confirm("t1", migration: "cd", directory: "/x")
        #expect(!byAnother)
        let byItsOwn = ledger.confirm("t1", migration: "ab", directory: "/d/.migrated/tenant_t1-5")
        #expect(byItsOwn)
        #expect(ledger.departure("t1")?.committed == true)
        #expect(ledger.departure("t1")?.directory == "/d/.migrated/tenant_t1-5")
        let again = ledger.confirm("t1", migration: "ab", directory: "/y")
        #expect(!again)
        let forgotten = ledger.forgetDeparture("t1")
        #expect(forgotten?.id == "t1")
        #expect(ledger.departure("t1") == nil)
        #expect(ledger.departedTenant(subdomain: "acme") == nil)
        let twice = ledger.forgetDeparture("t1")
        #expect(twice == nil)
        ledger.leaveUndecided("t2")
        #expect(ledger.isUndecided("t2"))
        #expect(!ledger.isUndecided("t1"))
    }

    @Test func aBeginClaimsANewIdOnceAndRespectsTheLimit() throws {
        var ledger = MigrationLedger()
        let first = try ledger.begin("a", migration: "01", now: 0, limit: 2)
        #expect(first == .init(claimID: true, releaseSubdomain: nil))
        // Begun again (a new migration id): the same claim, the migration replaced.
        let second = try ledger.begin("a", migration: "02", now: 1, limit: 2)
        #expect(second == .init(claimID: false, releaseSubdomain: nil))
        #expect(ledger.arrival("a")?.migration == "02")
        _ = try ledger.begin("b", migration: "03", now: 2, limit: 2)
        #expect(throws: TenantError.self) { try ledger.begin("c", migration: "04", now: 3, limit: 2) }
        #expect(ledger.arrival("c") == nil)
        // A known id begins again even at the limit.
        _ = try ledger.begin("b", migration: "05", now: 4, limit: 2)
    }

    @Test func chunksCountAgainstTheBudgetAndOnlyWhileReceiving() throws {
        var ledger = MigrationLedger()
        _ = try ledger.begin("a", migration: "01", now: 0, limit: 8)
        _ = try ledger.begin("b", migration: "02", now: 0, limit: 8)
        try ledger.chunk("a", migration: "01", growth: 600, isNew: true, limit: 1000, now: 5)
        #expect(ledger.arrival("a")?.bytes == 600)
        #expect(ledger.arrival("a")?.files == 1)
        #expect(ledger.arrival("a")?.touched == 5)
        // The limit is over every arrival: b cannot take what a holds.
        let refused = #expect(throws: TenantError.self) {
            try ledger.chunk("b", migration: "02", growth: 401, isNew: true, limit: 1000, now: 6)
        }
        #expect(refused?.kind == .quotaExceeded)
        #expect(ledger.arrival("b")?.bytes == 0)
        #expect(ledger.arrival("b")?.files == 0)
        try ledger.chunk("b", migration: "02", growth: 400, isNew: false, limit: 1000, now: 6)
        #expect(ledger.stagedBytes == 1000)
        // Unlimited: 0.
        try ledger.chunk("b", migration: "02", growth: 1 << 40, isNew: false, limit: 0, now: 7)
        // Another migration's chunk, or an unknown id's: NOTFOUND.
        let wrong = #expect(throws: TenantError.self) {
            try ledger.chunk("a", migration: "99", growth: 1, isNew: false, limit: 0, now: 8)
        }
        #expect(wrong?.kind == .notFound)
        #expect(throws: TenantError.self) {
            try ledger.chunk("z", migration: "01", growth: 1, isNew: false, limit: 0, now: 8)
        }
        // Prepared: its copy was verified, so no more chunks until a BEGIN.
        let claims = try ledger.prepare("a", migration: "01", subdomain: "acme", now: 0)
        #expect(claims == .init(claimSubdomain: true, isNew: true))
        let prepared = #expect(throws: TenantError.self) {
            try ledger.chunk("a", migration: "01", growth: 1, isNew: false, limit: 0, now: 9)
        }
        #expect(prepared?.kind == .invalid)
    }

    @Test func aMigrationSendsAtMostTheFileLimit() throws {
        var ledger = MigrationLedger()
        _ = try ledger.begin("a", migration: "01", now: 0, limit: 8)
        ledger.held("a", bytes: 0, files: EngineLimits.migrationMaxFiles - 1)
        try ledger.chunk("a", migration: "01", growth: 1, isNew: true, limit: 0, now: 1)
        #expect(throws: TenantError.self) {
            try ledger.chunk("a", migration: "01", growth: 1, isNew: true, limit: 0, now: 2)
        }
        // An existing file still grows.
        try ledger.chunk("a", migration: "01", growth: 1, isNew: false, limit: 0, now: 3)
    }

    @Test func prepareHoldsTheSubdomainUntilTheArrivalEnds() throws {
        var ledger = MigrationLedger()
        _ = try ledger.begin("a", migration: "01", now: 0, limit: 8)
        #expect(!ledger.isPrepared("a", migration: "01"))
        let claims = try ledger.prepare("a", migration: "01", subdomain: "acme", now: 0)
        #expect(claims == .init(claimSubdomain: true, isNew: true))
        #expect(ledger.isPrepared("a", migration: "01"))
        #expect(!ledger.isPrepared("a", migration: "02"))
        #expect(ledger.preparedSubdomain(of: "a") == "acme")
        #expect(ledger.arrival(holding: "acme", besides: "b") == "a")
        #expect(ledger.arrival(holding: "acme", besides: "a") == nil)
        // PREPARE again (a lost reply): still prepared, nothing more to claim; another subdomain
        // for the same verified copy is refused.
        let claimsAgain = try ledger.prepare("a", migration: "01", subdomain: "acme", now: 0)
        #expect(claimsAgain == .init(claimSubdomain: false, isNew: false))
        #expect(throws: TenantError.self) { try ledger.prepare("a", migration: "01", subdomain: "other", now: 0) }
        // A PREPARE of a migration begun over: refused.
        #expect(throws: TenantError.self) { try ledger.prepare("a", migration: "02", subdomain: "acme", now: 0) }
        let ended = ledger.end("a")
        #expect(ended == .init(releaseID: true, releaseSubdomain: "acme"))
        #expect(ledger.arrival("a") == nil)
        let endedTwice = ledger.end("a")
        #expect(endedTwice == .init(releaseID: false, releaseSubdomain: nil))
    }

    @Test func aTenantWithoutSubdomainPreparesWithoutAClaim() throws {
        var ledger = MigrationLedger()
        _ = try ledger.begin("a", migration: "01", now: 0, limit: 8)
        let claims = try ledger.prepare("a", migration: "01", subdomain: "", now: 0)
        #expect(claims == .init(claimSubdomain: false, isNew: true))
        #expect(ledger.isPrepared("a", migration: "01"))
        #expect(ledger.preparedSubdomain(of: "a") == nil)
        let ended = ledger.end("a")
        #expect(ended == .init(releaseID: true, releaseSubdomain: nil))
    }

    @Test func aBeginAfterPrepareReceivesAgainAndReleasesTheSubdomain() throws {
        var ledger = MigrationLedger()
        _ = try ledger.begin("a", migration: "01", now: 0, limit: 8)
        try ledger.chunk("a", migration: "01", growth: 100, isNew: true, limit: 0, now: 1)
        _ = try ledger.prepare("a", migration: "01", subdomain: "acme", now: 0)
        let begun = try ledger.begin("a", migration: "02", now: 2, limit: 8)
        #expect(begun == .init(claimID: false, releaseSubdomain: "acme"))
        #expect(ledger.arrival("a")?.phase == .receiving)
        // What staging holds still counts.
        #expect(ledger.arrival("a")?.bytes == 100)
        #expect(!ledger.isPrepared("a", migration: "02"))
        #expect(ledger.preparedSubdomain(of: "a") == nil)
    }

    @Test func aPrepareWhoseMarkFailedIsTakenBack() throws {
        var ledger = MigrationLedger()
        _ = try ledger.begin("a", migration: "01", now: 0, limit: 8)
        _ = try ledger.prepare("a", migration: "01", subdomain: "acme", now: 0)
        let byAnother = ledger.unprepare("a", migration: "02")
        #expect(byAnother == nil)
        let released = ledger.unprepare("a", migration: "01")
        #expect(released == "acme")
        #expect(ledger.arrival("a")?.phase == .receiving)
        let twice = ledger.unprepare("a", migration: "01")
        #expect(twice == nil)
        try ledger.chunk("a", migration: "01", growth: 1, isNew: true, limit: 0, now: 1)
    }

    @Test func onlyReceivingArrivalsGoIdle() throws {
        var ledger = MigrationLedger()
        _ = try ledger.begin("a", migration: "01", now: 0, limit: 8)
        _ = try ledger.begin("b", migration: "02", now: 0, limit: 8)
        _ = try ledger.begin("c", migration: "03", now: 0, limit: 8)
        try ledger.chunk("c", migration: "03", growth: 1, isNew: true, limit: 0, now: 500)
        _ = try ledger.prepare("b", migration: "02", subdomain: "", now: 0)
        ledger.restore("d", migration: "04", subdomain: "dee", bytes: 10)
        #expect(ledger.idle(now: 999, idle: 1000) == [])
        // a sent nothing since 0; b is prepared; c was touched at 500; d was found prepared.
        #expect(ledger.idle(now: 1000, idle: 1000) == ["a"])
        #expect(ledger.isIdle("a", now: 1000, idle: 1000))
        #expect(!ledger.isIdle("b", now: 1000, idle: 1000))
        #expect(!ledger.isIdle("z", now: 1000, idle: 1000))
        #expect(ledger.idle(now: 1500, idle: 1000) == ["a", "c"])
        #expect(ledger.idle(now: Int64.max / 2, idle: 1000) == ["a", "c"])
    }

    @Test func aPreparedArrivalFoundAtStartWaitsForItsDecision() throws {
        var ledger = MigrationLedger()
        ledger.restore("d", migration: "04", subdomain: "dee", bytes: 10)
        #expect(ledger.isPrepared("d", migration: "04"))
        #expect(ledger.preparedSubdomain(of: "d") == "dee")
        #expect(ledger.stagedBytes == 10)
        #expect(throws: TenantError.self) {
            try ledger.chunk("d", migration: "04", growth: 1, isNew: true, limit: 0, now: 1)
        }
        let ended = ledger.end("d")
        #expect(ended == .init(releaseID: true, releaseSubdomain: "dee"))
    }
}
