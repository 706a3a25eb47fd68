import Logging
import TestSupport
import Testing

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// The plain port's own listener lets its port go however the server ends, started or not (a
/// TLS port that fails to bind after it ends the server before any accept).
@Suite("Plain listener")
struct PlainListenerTests {
    /// The inode of what `descriptor` names now, nil when it names nothing.
    static func inode(_ descriptor: CInt) -> UInt64? {
        var status = stat()
        return fstat(descriptor, &status) == 0 ? UInt64(status.st_ino) : nil
    }

    @Test func aListenerNeverStartedClosesItsSocketWhenStopped() throws {
        let listener = try PlainListener(host: "127.0.0.1", port: 0)
        let socket = try #require(Self.inode(listener.descriptor))
        #expect(throws: (any Error).self) { _ = try PlainListener(host: "127.0.0.1", port: listener.port) }
        listener.stop()
        // Closed: the descriptor names nothing, or (taken again by another test) another file.
        #expect(Self.inode(listener.descriptor) != socket)
        let again = try PlainListener(host: "127.0.0.1", port: listener.port)
        again.stop()
    }

    @Test func aStartedListenerLetsItsPortGoWhenStopped() async throws {
        let listener = try PlainListener(host: "127.0.0.1", port: 0)
        let socket = try #require(Self.inode(listener.descriptor))
        listener.start(logger: Logger(label: "test")) { socket in close(socket) }
        listener.stop()
        // Closed once the accepting thread ended (stopped twice: still once).
        listener.stop()
        try await waitUntilAsync("the socket is closed", seconds: 10) { Self.inode(listener.descriptor) != socket }
        try await waitUntilAsync("the port is free again", seconds: 10) {
            guard let again = try? PlainListener(host: "127.0.0.1", port: listener.port) else { return false }
            again.stop()
            return true
        }
    }
}
