import Testing

@testable import TenantServer

/// The relations between the server's fixed limits (``FixedLimits``), which each limit's reason
/// counts on: a change of one number that breaks another's reason fails here.
@Suite("Server fixed limits")
struct FixedLimitsTests {
    @Test func theLimitsKeepTheirRelations() {
        // Before authentication a connection holds less than after it, and the lane's reply
        // bytes are written out well before the window stops the reading.
        #expect(FixedLimits.unauthenticatedReplyWindow < FixedLimits.replyWindow)
        #expect(FixedLimits.unauthenticatedReplyWindowBytes < FixedLimits.replyWindowBytes)
        #expect(FixedLimits.outboxWriteBytes <= FixedLimits.replyWindowBytes / 4)
        #expect(FixedLimits.replyBatchMergeBytes <= FixedLimits.writeChunk)
        #expect(FixedLimits.remoteRunReplyBytes <= FixedLimits.replyWindowBytes)
        // Turn shares: the default budget gives two active tenants at least the minimum each, and
        // the activity span covers several turns (a turn is well under a millisecond).
        #expect(LoopTurn.defaultTurnBudget >= 2 * FixedLimits.minimumTurnShare)
        #expect(FixedLimits.minimumTurnShare <= FixedLimits.requestsPerTurn)
        #expect(FixedLimits.turnShareActiveSpan >= 1_000_000)
        // AUTH: the free failures come before the closing ones, and the slots are few.
        #expect(FixedLimits.authConnectionFreeFailures < FixedLimits.authConnectionMaxFailures)
        #expect(FixedLimits.authAddressFreeFailures < FixedLimits.authAddressMaxFailures)
        #expect(FixedLimits.authDecayPerSecond > 0 && FixedLimits.authFailureSlots >= 1)
        // A migration reply's values cannot outnumber its bytes' worth by much (four per file).
        #expect(FixedLimits.migrationReplyValues <= FixedLimits.migrationReplyBytes / 8)
        #expect(FixedLimits.maxConnectionMoves >= 2 && FixedLimits.maxMetricsConnections >= 1)
    }
}
