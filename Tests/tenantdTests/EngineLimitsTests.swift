import Testing

@testable import TenantEngine

/// The relations between the engine's limits (``EngineLimits``), which each limit's reason
/// counts on: a change of one number that breaks another's reason fails here.
@Suite("Engine limits")
struct EngineLimitsTests {
    @Test func theLimitsKeepTheirRelations() {
        // HISTORY: the default page is a page the bound allows, and a sealed chunk's text fits one
        // reply's text bound (a page is never cut inside its first chunk).
        #expect(
            0 < EngineLimits.defaultHistoryLimit && EngineLimits.defaultHistoryLimit <= EngineLimits.maxHistoryLimit
        )
        #expect(EngineLimits.roomChunkTextBytes <= EngineLimits.maxHistoryTextBytes)
        #expect(EngineLimits.roomChunkMessages >= 1 && EngineLimits.maxRoomsPage >= 1 && EngineLimits.maxUsersPage >= 1)
        // A record scratch kept between records holds less than a chunk: it is for one message.
        #expect(EngineLimits.recordScratchLimit < EngineLimits.roomChunkTextBytes)
        // The credential journal is compacted long before start-up stops reading it.
        #expect(EngineLimits.credentialCompactionBytes * 8 <= EngineLimits.credentialMaxReplayBytes)
        // Migration: a CHUNK is a RESP bulk string well under Redis's 512 MiB bound, a live round
        // may send at least one, and a staged block is a power of two.
        #expect(EngineLimits.migrationChunkSize < 512 << 20)
        #expect(EngineLimits.migrationPauseThreshold >= EngineLimits.migrationChunkSize)
        #expect(EngineLimits.migrationStagingBlock.nonzeroBitCount == 1)
        #expect(EngineLimits.migrationMaxLiveRounds >= 1 && EngineLimits.migrationMaxDepth >= 2)
        #expect(EngineLimits.migrationMaxFileSize >= 1 << 30, "a segment or a checkpoint of a large tenant")
        // TENANT UPDATE's ranges: max_storage_gb's range in bytes fits the byte bound.
        #expect(EngineLimits.maxStorageBytesLimit / PlanLimits.gigabyte >= 1 << 30)
        #expect(EngineLimits.maxUsersLimit > 0 && EngineLimits.maxMessagesPerDayLimit > EngineLimits.maxUsersLimit)
    }
}
