import CPOSIX
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Work an event loop runs after its next poll of the sockets, not before it.
///
/// NIO runs a loop's tasks until none is left before it polls again, so work that a task defers
/// with `execute` (the held connections of a tenant over its turn share) runs before any socket
/// that became readable meanwhile is read: a quiet tenant's request then waits for the whole of
/// a flood's buffered requests, however the turn is shared. Deferred here,
/// the work is woken by a byte through a pipe that the loop polls with its sockets, so it runs in
/// the loop's next round of reads, in the kernel's order with theirs (as Redis's event loop
/// serves every ready client once per `aeProcessEvents`).
///
/// One wake-up per loop turn however much work waits: the byte is written once until the loop has
/// read it. Until the pipe is set up (its first use on a loop), or if it cannot be, the work runs
/// as a task, as before.
///
/// `@unchecked Sendable`: every property is touched only on `loop` (checked with assertions).
final class AfterPoll: @unchecked Sendable {
    private enum Pipe {
        case none
        case settingUp
        case ready(writeEnd: CInt)
        case unusable
    }

    private let loop: any EventLoop
    private var pipe = Pipe.none
    private var work: [() -> Void] = []
    /// The array the last wake-up ran, kept for its capacity.
    private var spare: [() -> Void] = []
    /// A wake-up is on its way (a byte in the pipe, or a task): more work waits for it.
    private var wakePending = false

    private init(loop: any EventLoop) {
        self.loop = loop
    }

    private static let all = PerLoop { AfterPoll(loop: $0) }

    /// The one of `loop` (one per loop, for the process's life).
    static func of(_ loop: any EventLoop) -> AfterPoll { self.all.of(loop) }

    /// Runs `work` on the loop once it has polled its sockets again. On the loop only.
    func run(_ work: @escaping () -> Void) {
        self.loop.assertInEventLoop()
        self.work.append(work)
        guard !self.wakePending else { return }
        self.wakePending = true
        if case .ready(let writeEnd) = self.pipe {
            var byte: UInt8 = 1
            if Glibc.write(writeEnd, &byte, 1) == 1 { return }
            // A full pipe holds a wake-up already; anything else: tasks from now on.
            if errno != EAGAIN { self.pipe = .unusable }
        } else if case .none = self.pipe {
            self.setUpPipe()
        }
        self.loop.execute { self.woken() }
    }

    /// The wake-up came: runs what waited (work it adds waits for the next one).
    fileprivate func woken() {
        self.loop.assertInEventLoop()
        guard self.wakePending else { return }
        self.wakePending = false
        var work = self.spare
        swap(&work, &self.work)
        for item in work { item() }
        work.removeAll(keepingCapacity: true)
        self.spare = work
    }

    private func setUpPipe() {
        // Only NIO's own loops poll descriptors (a test's EmbeddedEventLoop does not).
        guard let bootstrap = NIOPipeBootstrap(validatingGroup: self.loop) else {
            self.pipe = .unusable
            return
        }
        self.pipe = .settingUp
        var ends: [CInt] = [-1, -1]
        guard cposix_pipe(&ends) == 0 else {
            self.pipe = .unusable
            return
        }
        let (readEnd, writeEnd) = (ends[0], ends[1])
        bootstrap
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WakeReader(owner: self))
                }
            }
            .takingOwnershipOfDescriptor(input: readEnd)
            .hop(to: self.loop)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    self.pipe = .ready(writeEnd: writeEnd)
                    channel.closeFuture.whenComplete { _ in
                        self.pipe = .unusable
                        _ = Glibc.close(writeEnd)
                        // A byte it will not read: the work runs as a task instead.
                        if self.wakePending { self.loop.execute { self.woken() } }
                    }
                case .failure:
                    // The read end is not closed here: once NIO made its channel (a loop shutting
                    // down refuses the registration) it closed it, and a second close could hit a
                    // descriptor another thread has opened since. Left open only when the
                    // channel was never made, which a fresh pipe does not cause.
                    self.pipe = .unusable
                    _ = Glibc.close(writeEnd)
                }
            }
    }

    /// Reads the pipe's bytes; after a read, the wake-up.
    private final class WakeReader: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        private let owner: AfterPoll

        init(owner: AfterPoll) {
            self.owner = owner
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

        func channelReadComplete(context: ChannelHandlerContext) {
            self.owner.woken()
        }
    }
}
