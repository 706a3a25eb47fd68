import NIOCore
import NIOPosix
import Synchronization
import TestSupport
import Testing

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// ``AfterPoll`` runs deferred work after the loop's next poll of its descriptors: a chain of
/// work that keeps deferring itself does not keep the loop from reading what arrives meanwhile
/// (as a chain of `execute` tasks does: NIO runs tasks until none is left before it polls).
@Suite("Work deferred past the loop's next poll")
struct AfterPollTests {
    /// Records, when a byte arrives through a pipe the loop reads, how far the chain had gone.
    final class Reader: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let chain: Chain
        let seenAt = Atomic<Int>(-1)

        init(chain: Chain) {
            self.chain = chain
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if self.seenAt.load(ordering: .relaxed) < 0 {
                self.seenAt.store(self.chain.steps.load(ordering: .relaxed), ordering: .relaxed)
                self.chain.stop.store(true, ordering: .relaxed)
            }
        }
    }

    final class Chain: @unchecked Sendable {
        let loop: any EventLoop
        let steps = Atomic<Int>(0)
        let cap: Int
        let stop = Atomic<Bool>(false)
        let useAfterPoll: Bool

        init(loop: any EventLoop, cap: Int, useAfterPoll: Bool) {
            self.loop = loop
            self.cap = cap
            self.useAfterPoll = useAfterPoll
        }

        /// One step, then the next, deferred, until stopped or at the cap.
        func step() {
            let done = self.steps.wrappingAdd(1, ordering: .relaxed).newValue
            guard done < self.cap, !self.stop.load(ordering: .relaxed) else { return }
            if self.useAfterPoll {
                AfterPoll.of(self.loop).run { self.step() }
            } else {
                self.loop.execute { self.step() }
            }
        }
    }

    /// Runs a self-deferring chain on a loop, writes a byte into a pipe the loop reads once the
    /// chain is under way, and returns how many steps had run when the loop read it, and the cap.
    static func stepsBeforeTheRead(useAfterPoll: Bool) async throws -> (seenAt: Int, cap: Int) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        var ends: [CInt] = [-1, -1]
        #expect(pipe(&ends) == 0)
        // Deferred past each poll, the chain runs until the byte is read (the cap only bounds a
        // broken run); chained as tasks, it runs to the cap first.
        let chain = Chain(loop: loop, cap: useAfterPoll ? 100_000_000 : 500_000, useAfterPoll: useAfterPoll)
        let reader = Reader(chain: chain)
        let channel = try await NIOPipeBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) }
            }
            .takingOwnershipOfDescriptor(input: ends[0])
            .get()
        // The chain's first wake-up sets up AfterPoll's pipe; from then on it polls each step.
        loop.execute { chain.step() }
        try await waitUntilAsync("the chain to start") { chain.steps.load(ordering: .relaxed) >= 20 }
        var byte: UInt8 = 7
        #expect(write(ends[1], &byte, 1) == 1)
        try await waitUntilAsync("the loop to read the byte") { reader.seenAt.load(ordering: .relaxed) >= 0 }
        chain.stop.store(true, ordering: .relaxed)
        try await channel.close()
        close(ends[1])
        try await group.shutdownGracefully()
        return (reader.seenAt.load(ordering: .relaxed), chain.cap)
    }

    @Test func aSelfDeferringChainLetsTheLoopReadBetweenItsSteps() async throws {
        let (seenAt, cap) = try await Self.stepsBeforeTheRead(useAfterPoll: true)
        #expect(seenAt < cap, "the byte was read while the chain went on (at step \(seenAt))")
    }

    /// The contrast, which is why AfterPoll exists: chained with `execute`, NIO runs the whole
    /// chain before it polls again, so the byte is read only once the chain stopped at its cap.
    @Test func aChainOfTasksKeepsTheLoopFromReadingUntilItEnds() async throws {
        let (seenAt, cap) = try await Self.stepsBeforeTheRead(useAfterPoll: false)
        #expect(seenAt == cap, "read only after the whole chain (at step \(seenAt) of \(cap))")
    }
}
