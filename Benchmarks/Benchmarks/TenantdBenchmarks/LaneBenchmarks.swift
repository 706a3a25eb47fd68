import Benchmark
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
import Synchronization
import TenantEngine
import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// The synchronous lane's allocations per request, end to end in one process: a tenantd server on
/// one event loop (the tenant placed there, log `everysec`), and a client on a blocking socket
/// whose buffers are made before the measurement, so that every malloc counted is the server's.
/// Committed thresholds in `Thresholds/` (checked by `.ci/run`): a change that makes a POST,
/// a HISTORY or a PING on the lane allocate more fails the build.
let laneBenchmarks: @Sendable () -> Void = {
    let configuration = { (tolerance: Int) in hotPathConfiguration(tolerating: tolerance, iterations: 100) }
    let posts = pipelinedPosts(hotPathTexts, room: "general")
    let pings = Array(repeating: Array("*1\r\n$4\r\nPING\r\n".utf8), count: 1000).flatMap { $0 }
    let histories = Array(
        repeating: Array("*4\r\n$7\r\nHISTORY\r\n$5\r\nquiet\r\n$5\r\nLIMIT\r\n$2\r\n50\r\n".utf8),
        count: 100
    ).flatMap { $0 }

    // 1,000 pipelined POSTs of corpus messages (as redis-py's pipeline sends them) and their replies.
    Benchmark(
        "HotPath.Lane.1000POSTs",
        configuration: configuration(60),
        closure: { benchmark in
            guard let client = LaneServer.client else { return benchmark.error("no server") }
            benchmark.startMeasurement()
            client.send(posts)
            client.readLines(1000)
            benchmark.stopMeasurement()
        },
        setup: { try await LaneServer.start() },
        teardown: { await LaneServer.stop() }
    )

    // 100 HISTORY LIMIT 50 of a room of 50 corpus messages: the page's reply bytes are the
    // allocation a page needs.
    Benchmark(
        "HotPath.Lane.100HISTORYs",
        configuration: configuration(40),
        closure: { benchmark in
            guard let client = LaneServer.client, let size = LaneServer.historyReplySize else {
                return benchmark.error("no server")
            }
            benchmark.startMeasurement()
            client.send(histories)
            client.readBytes(100 * size)
            benchmark.stopMeasurement()
        },
        setup: { try await LaneServer.start() },
        teardown: { await LaneServer.stop() }
    )

    // 1,000 pipelined PINGs: nothing but the parse, the dispatch and the reply.
    Benchmark(
        "HotPath.Lane.1000PINGs",
        configuration: configuration(40),
        closure: { benchmark in
            guard let client = LaneServer.client else { return benchmark.error("no server") }
            benchmark.startMeasurement()
            client.send(pings)
            client.readBytes(1000 * 7)  // +PONG\r\n
            benchmark.stopMeasurement()
        },
        setup: { try await LaneServer.start() },
        teardown: { await LaneServer.stop() }
    )
}

/// The server the lane benchmarks talk to, started by each benchmark's setup, stopped by its
/// teardown.
enum LaneServer {
    struct Running {
        let directory: String
        let group: MultiThreadedEventLoopGroup
        let registry: TenantRegistry
        let services: ServiceGroup
        let task: Task<Void, any Error>
        let client: BlockingClient
        let historyReplySize: Int
    }

    private static let running = Mutex<Running?>(nil)

    static var client: BlockingClient? { running.withLock { $0?.client } }
    static var historyReplySize: Int? { running.withLock { $0?.historyReplySize } }

    static func start() async throws {
        let directory = temporaryDirectory()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var engine = EngineConfiguration(dataDirectory: directory, fsync: .everysec)
        engine.adminToken = String(repeating: "b", count: 40)
        engine.defaultPlan = .enterprise
        engine.placement = EventLoops.placement(group: group)
        var quiet = Logger(label: "bench")
        quiet.logLevel = .critical
        let registry = TenantRegistry(configuration: engine, logger: quiet)
        try await registry.bootstrap()
        let created = try await registry.createTenant(name: "Bench", subdomain: "bench", plan: nil, owner: "alice")
        var configuration = ServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.eventLoopGroup = group
        let port = Mutex(0)
        let server = TenantServer(configuration: configuration, registry: registry, logger: quiet) { _, bound in
            port.withLock { $0 = bound }
        }
        let services = ServiceGroup(services: [server], logger: quiet)
        let task = Task { try await services.run() }
        while port.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
        let client = try BlockingClient(port: port.withLock { $0 })
        let token = created.ownerToken
        client.send(Array("AUTH alice@bench \(token)\r\n".utf8))
        guard client.readLine() == "+OK" else { throw BenchmarkSetupError.auth }
        // The quiet room's 50 messages, then one page to learn its reply's size.
        client.send(pipelinedPosts(Array(hotPathTexts.prefix(50)), room: "quiet"))
        client.readLines(50)
        // What is measured must be the lane: the page runs there (INFO's server section is the
        // operator's).
        let admin = try BlockingClient(port: port.withLock { $0 })
        defer { admin.close() }
        admin.send(Array("AUTH admin \(engine.adminToken!)\r\n".utf8))
        guard admin.readLine() == "+OK" else { throw BenchmarkSetupError.auth }
        let before = try admin.laneCommands()
        client.send(Array("*4\r\n$7\r\nHISTORY\r\n$5\r\nquiet\r\n$5\r\nLIMIT\r\n$2\r\n50\r\n".utf8))
        let size = client.readHistoryPage()
        guard try admin.laneCommands() > before else { throw BenchmarkSetupError.notOnTheLane }
        running.withLock {
            $0 = Running(
                directory: directory,
                group: group,
                registry: registry,
                services: services,
                task: task,
                client: client,
                historyReplySize: size
            )
        }
    }

    static func stop() async {
        let taken = running.withLock { state -> Running? in
            let running = state
            state = nil
            return running
        }
        guard let running = taken else { return }
        running.client.close()
        await running.services.triggerGracefulShutdown()
        _ = try? await running.task.value
        await running.registry.shutdown(checkpoint: false)
        try? await running.group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: running.directory)
    }
}

enum BenchmarkSetupError: Error {
    case connect, auth, notOnTheLane
}

/// A client on a blocking socket with a read buffer made once: it allocates nothing per request.
/// `@unchecked Sendable`: one benchmark at a time uses it, from its own task.
final class BlockingClient: @unchecked Sendable {
    private let fd: Int32
    private let buffer: UnsafeMutableRawBufferPointer

    init(port: Int) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        self.buffer = .allocate(byteCount: 1 << 20, alignment: 1)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            _ = Glibc.close(fd)
            self.buffer.deallocate()
            throw BenchmarkSetupError.connect
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    func close() {
        _ = Glibc.close(self.fd)
        self.buffer.deallocate()
    }

    func send(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let sent = Glibc.send(self.fd, raw.baseAddress! + offset, raw.count - offset, 0)
                guard sent > 0 else { fatalError("send: \(errno)") }
                offset += sent
            }
        }
    }

    /// Reads until `count` lines (CRLFs) have come.
    func readLines(_ count: Int) {
        var seen = 0
        while seen < count {
            let got = recv(self.fd, self.buffer.baseAddress, self.buffer.count, 0)
            guard got > 0 else { fatalError("recv: \(errno)") }
            for index in 0..<got where self.buffer[index] == 10 { seen += 1 }
        }
    }

    /// Reads exactly `count` bytes.
    func readBytes(_ count: Int) {
        var left = count
        while left > 0 {
            let got = recv(self.fd, self.buffer.baseAddress, min(left, self.buffer.count), 0)
            guard got > 0 else { fatalError("recv: \(errno)") }
            left -= got
        }
    }

    /// One reply line, read a byte at a time (set-up only).
    func readLine() -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while recv(self.fd, &byte, 1, 0) == 1 {
            if byte == 10 { break }
            if byte != 13 { line.append(byte) }
        }
        return String(decoding: line, as: UTF8.self)
    }

    /// A HISTORY page's reply (set-up only): its size in bytes.
    func readHistoryPage() -> Int {
        var size = 0
        func line() -> String {
            let text = self.readLine()
            size += text.utf8.count + 2
            return text
        }
        let header = line()
        guard header.hasPrefix("*"), let count = Int(header.dropFirst()) else { fatalError("HISTORY: \(header)") }
        for _ in 0..<count {
            _ = line()  // *4
            _ = line()  // seq
            _ = line()  // timestamp
            for _ in 0..<2 {
                let bulk = line()
                guard let length = Int(bulk.dropFirst()) else { fatalError("HISTORY: \(bulk)") }
                var body = [UInt8](repeating: 0, count: length + 2)
                var got = 0
                while got < body.count {
                    let read = body.withUnsafeMutableBytes {
                        recv(self.fd, $0.baseAddress! + got, $0.count - got, 0)
                    }
                    guard read > 0 else { fatalError("HISTORY: short read") }
                    got += read
                }
                size += body.count
            }
        }
        return size
    }

    /// INFO's `lane_commands_processed` (set-up only).
    func laneCommands() throws -> Int {
        self.send(Array("*1\r\n$4\r\nINFO\r\n".utf8))
        let header = self.readLine()
        guard header.hasPrefix("$"), let length = Int(header.dropFirst()) else {
            throw BenchmarkSetupError.notOnTheLane
        }
        var body = [UInt8](repeating: 0, count: length + 2)
        var got = 0
        while got < body.count {
            let read = body.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress! + got, $0.count - got, 0) }
            guard read > 0 else { throw BenchmarkSetupError.notOnTheLane }
            got += read
        }
        for line in String(decoding: body, as: UTF8.self).split(whereSeparator: \.isNewline)
        where line.hasPrefix("lane_commands_processed:") {
            return Int(line.split(separator: ":")[1]) ?? 0
        }
        throw BenchmarkSetupError.notOnTheLane
    }
}
