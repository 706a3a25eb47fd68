import CPOSIX
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The plain TCP port's listening socket, accepted on a thread of its own instead of by NIO's
/// `ServerBootstrap`: the server then knows each connection's descriptor and can move the
/// connection to its tenant's event loop once AUTH named the tenant (``ConnectionSocket``), as
/// Dragonfly moves its connections. NIO can neither move a channel between loops nor give up the
/// descriptor of one it accepted; it takes one it is given (`ClientBootstrap.withConnectedSocket`).
///
/// Accepting is rare next to reading, so one blocking `accept4` on a thread costs nothing on the
/// event loops; each socket is then set up on a loop as NIO's own accept would set it up.
final class PlainListener: Sendable {
    /// The listening socket's descriptor, closed once by ``stop()``: after the accepting thread
    /// ended, or at once when no thread ever accepted (a TLS port that failed to bind after it).
    let descriptor: CInt
    /// The port it is bound to (the one the system chose, for port 0).
    let port: Int
    /// Tells the accepting thread to end.
    private let stopping = Atomic<Bool>(false)
    private let started = Atomic<Bool>(false)
    private let stopRequested = Atomic<Bool>(false)
    private let pool = NIOThreadPool(numberOfThreads: 1)

    /// The pause after `accept` failed for want of descriptors or memory, before it tries again
    /// (the pending connection stays queued meanwhile; Redis, too, logs and goes on).
    static let pauseAfterFailure: TimeAmount = .milliseconds(10)

    /// Binds and listens.
    /// - Throws: the system's error (`EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL` for a host that does
    ///   not resolve to one of this machine's addresses).
    init(host: String, port: Int) throws {
        var bound: CInt = 0
        let descriptor = cposix_listen(host, CInt(clamping: port), FixedLimits.listenBacklog, &bound)
        guard descriptor >= 0 else {
            throw IOError(errnoCode: errno, reason: "bind(\(host):\(port))")
        }
        self.descriptor = descriptor
        self.port = Int(bound)
    }

    /// Accepts until ``stop()``, handing each new socket (its descriptor, now the callee's) to
    /// `accepted` on the accepting thread.
    func start(logger: Logger, accepted: @escaping @Sendable (CInt) -> Void) {
        guard !self.started.exchange(true, ordering: .acquiringAndReleasing) else { return }
        self.pool.start()
        self.pool.submit { [descriptor = self.descriptor] _ in
            var lastWarning: NIODeadline?
            while !self.stopping.load(ordering: .acquiring) {
                let socket = cposix_accept(descriptor)
                if socket >= 0 {
                    accepted(socket)
                    continue
                }
                let failure = errno
                switch failure {
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    let now = NIODeadline.now()
                    if lastWarning.map({ now - $0 > .seconds(1) }) ?? true {
                        lastWarning = now
                        logger.warning(
                            "accepting a client connection failed: \(String(cString: strerror(failure)))",
                            metadata: ["event": "accept_failed"]
                        )
                    }
                    usleep(UInt32(Self.pauseAfterFailure.nanoseconds / 1000))
                case EBADF, EINVAL, ENOTSOCK:
                    // Shut down by stop(), or the socket is unusable: no more accepts (stop()
                    // closes it, once this thread has ended).
                    self.stopping.store(true, ordering: .releasing)
                default:
                    // ECONNABORTED, EPROTO, EPERM (a firewall), the network's transient errors:
                    // that connection is gone, the next may come.
                    continue
                }
            }
        }
    }

    /// Stops accepting: the thread wakes from `accept` and ends, then the socket is closed. The
    /// descriptor is closed exactly once, and never while the thread may still use its number.
    func stop() {
        guard !self.stopRequested.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Never started (the server failed to start after binding it): nothing else uses it.
        // Taking `started` here also keeps a start after the stop from running.
        if !self.started.exchange(true, ordering: .acquiringAndReleasing) {
            close(self.descriptor)
            return
        }
        // shutdown(2) wakes a thread blocked in accept (close alone would not, on Linux), and
        // makes every later accept fail: the thread ends either way.
        shutdown(self.descriptor, Int32(SHUT_RDWR))
        self.stopping.store(true, ordering: .releasing)
        let descriptor = self.descriptor
        self.pool.shutdownGracefully { _ in close(descriptor) }
    }
}
