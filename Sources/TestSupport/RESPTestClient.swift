import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Errors of the test client.
public enum RESPTestClientError: Error, CustomStringConvertible {
    case connect(Int32)
    case closed
    case timeout
    case malformedReply(String)

    public var description: String {
        switch self {
        case .connect(let code): return "connect failed: errno \(code)"
        case .closed: return "connection closed by the server"
        case .timeout: return "timed out waiting for a reply"
        case .malformedReply(let text): return "malformed reply: \(text)"
        }
    }
}

/// A small blocking RESP client for tests: sends commands (pipelined if asked) and reads replies.
///
/// `@unchecked Sendable`: one thread may send while another reads (the socket is full duplex);
/// the reply parser is touched only by the reading thread.
public final class RESPTestClient: @unchecked Sendable {
    private let fd: Int32
    private var parser = RESPReplyParser()

    /// Connects to `127.0.0.1:port`; every read gives up after `timeout` seconds.
    public init(port: Int, timeout: Int = 20) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RESPTestClientError.connect(errno) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(fd)
            throw RESPTestClientError.connect(code)
        }
        var time = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        self.fd = fd
    }

    deinit {
        close(self.fd)
    }

    /// Shrinks the socket's receive buffer, so that a client that does not read leaves its
    /// replies with the server (the kernel would otherwise take megabytes of them). Not below
    /// loopback's MSS (64 KiB): a smaller window stalls the sender on its persist timer.
    public func shrinkReceiveBuffer(to bytes: Int32 = 128 << 10) {
        var size = bytes
        setsockopt(self.fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Closes the connection now (a client going away).
    public func shutdown() {
        Glibc.shutdown(self.fd, Int32(SHUT_RDWR))
    }

    /// Ends what it sends (a half-close, as `redis-cli --pipe` does); replies can still be read.
    public func closeWrite() {
        Glibc.shutdown(self.fd, Int32(SHUT_WR))
    }

    /// Encodes a command as a RESP array of bulk strings.
    public static func encode(_ words: [String]) -> [UInt8] {
        encode(words.map { Array($0.utf8) })
    }

    /// Encodes a command of raw words.
    public static func encode(_ words: [[UInt8]]) -> [UInt8] {
        var bytes = Array("*\(words.count)\r\n".utf8)
        for word in words {
            bytes += Array("$\(word.count)\r\n".utf8) + word + [13, 10]
        }
        return bytes
    }

    /// Sends raw bytes.
    /// - Throws: ``RESPTestClientError/closed`` once the server closed the connection (never SIGPIPE).
    public func send(raw bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes {
                Glibc.send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw RESPTestClientError.closed
            }
            offset += written
        }
    }

    /// Reads the next reply.
    public func read() throws -> RESPReply {
        while true {
            if let reply = try self.parser.next() { return reply }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let count = chunk.withUnsafeMutableBytes { Glibc.read(self.fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw RESPTestClientError.timeout }
                throw RESPTestClientError.closed
            }
            if count == 0 { throw RESPTestClientError.closed }
            self.parser.feed(chunk[0..<count])
        }
    }

    /// Sends one command and reads its reply.
    @discardableResult
    public func call(_ words: String...) throws -> RESPReply {
        try self.call(words)
    }

    /// Sends one command and reads its reply.
    @discardableResult
    public func call(_ words: [String]) throws -> RESPReply {
        try self.send(raw: Self.encode(words))
        return try self.read()
    }

    /// Sends many commands at once, then reads their replies.
    public func pipeline(_ commands: [[String]]) throws -> [RESPReply] {
        try self.send(raw: commands.flatMap { Self.encode($0) })
        return try commands.map { _ in try self.read() }
    }

    /// Every byte until the server closes the connection (or the read times out).
    public func readToEnd() -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(self.fd, $0.baseAddress, $0.count) }
            if count <= 0 { return bytes }
            bytes += chunk[0..<count]
        }
    }

    /// True when the server closed the connection (reads see EOF).
    public func isClosedByServer() -> Bool {
        do {
            _ = try self.read()
            return false
        } catch RESPTestClientError.closed {
            return true
        } catch {
            return false
        }
    }
}
