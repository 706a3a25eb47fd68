import NIOCore
import NIOEmbedded
import TenantEngine
import Testing

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// ``LoopTurn``'s shares alone, on an `EmbeddedEventLoop`: connections that stand for a tenant's
/// load, each running lane requests until its tenant's share of the turn is used.
@Suite("Turn shares")
struct TurnShareTests {
    /// A connection with `left` requests to run, which records the order they ran in.
    final class Connection: LoopTurn.Waiter {
        var turnMark: UInt64 = 0
        var turnTenants: [ObjectIdentifier] = []
        var flushMark: UInt64 = 0
        let name: String
        let turn: LoopTurn
        let account: LoopTurn.Account
        var left: Int
        let ran: Ran

        final class Ran {
            var names: [String] = []
        }

        init(_ name: String, _ turn: LoopTurn, _ account: LoopTurn.Account, requests: Int, ran: Ran) {
            self.name = name
            self.turn = turn
            self.account = account
            self.left = requests
            self.ran = ran
        }

        func logWritten(_ tenant: Tenant, upTo: UInt64, error: TenantError?) {}
        func turnEnded() {}
        func shareResumed() { self.work() }

        /// Runs requests as the handler does: held once its tenant is over its share.
        func work() {
            var ran = false
            while self.left > 0 {
                if self.turn.isOverShare(self.account) {
                    self.turn.hold(self, for: self.account, afterRunning: ran)
                    return
                }
                ran = true
                self.turn.ran(self.account)
                self.left -= 1
                self.ran.names.append(self.name)
            }
        }
    }

    /// An account of its own (the turn keys a tenant's by the tenant; these are used directly).
    static func account() -> LoopTurn.Account {
        LoopTurn.Account(key: ObjectIdentifier(Connection.self))
    }

    /// Ends the loop's current turn (and every turn the held connections start).
    static func endTurns(_ loop: EmbeddedEventLoop, _ turn: LoopTurn) {
        turn.flushAtEnd(Connection("end", turn, Self.account(), requests: 0, ran: .init()))
        loop.run()
    }

    @Test func aTenantAloneIsNeverHeldBack() throws {
        let loop = EmbeddedEventLoop()
        defer { try? loop.syncShutdownGracefully() }
        let turn = LoopTurn.of(loop)
        turn.turnBudget = 64
        let ran = Connection.Ran()
        let alone = Connection("a", turn, Self.account(), requests: 500, ran: ran)
        for _ in 0..<3 {
            alone.left = 500
            alone.work()
            #expect(alone.left == 0, "a tenant alone runs everything it has in one turn")
            Self.endTurns(loop, turn)
            #expect(turn.share == Int.max)
        }
    }

    @Test func twoActiveTenantsShareTheTurnAndAFloodsConnectionsTakeTurns() throws {
        let loop = EmbeddedEventLoop()
        defer { try? loop.syncShutdownGracefully() }
        let turn = LoopTurn.of(loop)
        turn.turnBudget = 64
        let flood = Self.account()
        let quiet = Self.account()
        // Both run something in one turn: from the next, each has half the budget.
        turn.ran(flood)
        turn.ran(quiet)
        Self.endTurns(loop, turn)
        #expect(turn.share == 32)
        let ran = Connection.Ran()
        let connections = ["x", "y", "z"].map { Connection($0, turn, flood, requests: 100, ran: ran) }
        for connection in connections { connection.work() }
        #expect(ran.names == Array(repeating: "x", count: 32), "the first takes the share, the others wait")
        #expect(connections[1].left == 100 && connections[2].left == 100)
        // The quiet tenant still runs in this turn: its share is its own.
        #expect(!turn.isOverShare(quiet))
        turn.ran(quiet)
        Self.endTurns(loop, turn)
        // Turn after turn, 32 each, oldest held first: x y z x y z ... until all 300 ran.
        #expect(connections.allSatisfy { $0.left == 0 })
        #expect(ran.names.count == 300)
        // x used the first turn's share; then y and z (held without running) go first.
        let turns = stride(from: 0, to: 192, by: 32).map { ran.names[$0] }
        #expect(turns == ["x", "y", "z", "x", "y", "z"], "a tenant's connections take turns")
        for start in stride(from: 0, to: 192, by: 32) {
            #expect(Set(ran.names[start..<start + 32]).count == 1, "one connection per share of a turn")
        }
    }

    @Test func aBudgetOfZeroTurnsTheSharesOff() throws {
        let loop = EmbeddedEventLoop()
        defer { try? loop.syncShutdownGracefully() }
        let turn = LoopTurn.of(loop)
        turn.turnBudget = 0
        let flood = Self.account()
        turn.ran(flood)
        turn.ran(Self.account())
        Self.endTurns(loop, turn)
        #expect(turn.share == Int.max)
        let connection = Connection("x", turn, flood, requests: 1000, ran: .init())
        connection.work()
        #expect(connection.left == 0)
    }

    @Test func aTenantThatWentQuietNoLongerCountsAsActive() throws {
        let loop = EmbeddedEventLoop()
        defer { try? loop.syncShutdownGracefully() }
        let turn = LoopTurn.of(loop)
        turn.turnBudget = 64
        turn.ran(Self.account())
        turn.ran(Self.account())
        Self.endTurns(loop, turn)
        #expect(turn.share == 32)
        usleep(UInt32(FixedLimits.turnShareActiveSpan / 1000) + 10_000)
        let flood = Self.account()
        turn.ran(flood)
        Self.endTurns(loop, turn)
        #expect(turn.share == Int.max, "the quiet tenants' span ran out: the flood is alone")
    }

    @Test func quietTenantsLeaveTheTurnAndATurnCostsWhatRanInIt() throws {
        let loop = EmbeddedEventLoop()
        defer { try? loop.syncShutdownGracefully() }
        let turn = LoopTurn.of(loop)
        turn.turnBudget = 64
        // A thousand tenants active at once (one request each, as `--spread` sends them).
        let tenants = (0..<1000).map { _ in Connection.Ran() }
        let accounts = tenants.map { turn.account(key: ObjectIdentifier($0)) }
        for account in accounts { turn.ran(account) }
        Self.endTurns(loop, turn)
        #expect(turn.activeTenants == 1000)
        #expect(turn.share == FixedLimits.minimumTurnShare)
        #expect(turn.accountCount == 1000)
        // The same tenant asks again: the account it has.
        #expect(turn.account(key: ObjectIdentifier(tenants[7])) === accounts[7])
        // Two of them run again after the span; the others fell quiet (however late the turn).
        usleep(UInt32(FixedLimits.turnShareActiveSpan / 1000) + 5_000)
        turn.ran(accounts[0])
        turn.ran(accounts[1])
        Self.endTurns(loop, turn)
        #expect(turn.activeTenants == 2, "the other 998 went quiet")
        #expect(turn.share == 32)
        #expect(accounts[2].retired && !accounts[0].retired && !accounts[1].retired)
        #expect(turn.accountCount == 2, "a quiet tenant's account is dropped when it expires")
        // A retired account's tenant gets a new one.
        let again = turn.account(key: ObjectIdentifier(tenants[2]))
        #expect(again !== accounts[2] && !again.retired)
        // Accounts made and never run are swept once they outnumber the live ones.
        let idle = (0..<200).map { _ in Connection.Ran() }
        for tenant in idle { _ = turn.account(key: ObjectIdentifier(tenant)) }
        Self.endTurns(loop, turn)
        #expect(turn.accountCount <= 64 + 2 * (turn.activeTenants + 1))
    }
}
