import EngineTestSupport
import Logging
import NIOCore
import NIOEmbedded
import RESP
import TenantEngine
import TestSupport
import Testing
import WAL

@testable import TenantServer

/// One connection in process, on a `NIOAsyncTestingChannel` with a real engine behind it:
/// replies in request order, errors mapped to the contract's codes, PROTO closing the connection.
@Suite("Connection in process")
struct ConnectionTests {
    /// A connection over a testing channel, running, with the tenant `acme` owned by alice.
    struct Harness {
        let channel: NIOAsyncTestingChannel
        let task: Task<Void, Never>
        let registry: TenantRegistry
        let token: String

        /// Sends `text` as the client would.
        func send(_ text: String) async throws {
            try await self.channel.writeInbound(ByteBuffer(string: text))
        }

        /// Sends raw bytes.
        func send(bytes: [UInt8]) async throws {
            try await self.channel.writeInbound(ByteBuffer(bytes: bytes))
        }

        /// Waits for the replies to add up to `count` bytes at least, and returns them as text.
        func replies(atLeast count: Int) async throws -> String {
            var received = ByteBuffer()
            while received.readableBytes < count {
                var next = try await self.channel.waitForOutboundWrite(as: ByteBuffer.self)
                received.writeBuffer(&next)
            }
            return String(buffer: received)
        }
    }

    static func withConnection(
        fsync: FsyncPolicy = .no,
        fileSystem: (any WALFileSystem)? = nil,
        _ body: (Harness) async throws -> Void
    ) async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await EngineFixtures.registry(dir.path, fsync: fsync) { configuration in
                if let fileSystem { configuration.fileSystem = fileSystem }
            }
            let created = try await registry.createTenant(name: "Acme", subdomain: "acme", plan: nil, owner: "alice")
            let channel = NIOAsyncTestingChannel()
            let limits = ServerLimits()
            let gate = RequestGate(bound: limits.requestWindowBytes)
            let pushes = PushSink(eventLoop: channel.testingEventLoop)
            let wrapped = try await channel.testingEventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(
                    RESPRequestHandler(limits: limits.request, gate: gate, pushes: pushes)
                )
                return try NIOAsyncChannel<[RESPRequest], ConnectionOutput>(wrappingChannelSynchronously: channel)
            }.get()
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7379))
            let dispatcher = CommandDispatcher(registry: registry, logger: Logger.quiet, limits: limits)
            let task = Task {
                _ = await Connection(
                    id: 1,
                    channel: wrapped,
                    gate: gate,
                    pushes: pushes,
                    transport: ConnectionTransport(isTLS: false),
                    dispatcher: dispatcher
                ).run()
            }
            let harness = Harness(channel: channel, task: task, registry: registry, token: created.ownerToken)
            try await body(harness)
            _ = try? await channel.finish(acceptAlreadyClosed: true)
            await task.value
            await registry.shutdown()
        }
    }

    @Test func pipelinedRepliesComeBackInRequestOrder() async throws {
        try await Self.withConnection { connection in
            let requests =
                "PING\r\nAUTH alice@acme \(connection.token)\r\n"
                + "POST general one\r\nPOST general two\r\nECHO between\r\nPOST general three\r\n"
                + "HISTORY general LIMIT 2\r\n"
            try await connection.send(requests)
            let expected =
                "+PONG\r\n+OK\r\n:1\r\n:2\r\n$7\r\nbetween\r\n:3\r\n*2\r\n*4\r\n:2\r\n"
            let replies = try await connection.replies(atLeast: expected.utf8.count + 40)
            #expect(replies.hasPrefix(expected), "\(replies)")
            #expect(replies.contains("$5\r\nalice\r\n$3\r\ntwo\r\n") && replies.hasSuffix("$5\r\nthree\r\n"))
        }
    }

    /// A SUBSCRIBE's confirmation goes from its tenant straight to the handler; the task runs it
    /// only once the replies before it reached the handler, so it never overtakes them, even
    /// while they wait for a client that does not read.
    @Test func aSubscribeConfirmationNeverOvertakesTheRepliesBeforeIt() async throws {
        try await Self.withConnection { connection in
            try await connection.send("AUTH alice@acme \(connection.token)\r\n")
            #expect(try await connection.replies(atLeast: 5) == "+OK\r\n")
            let channel = connection.channel
            func setWritable(_ writable: Bool) async throws {
                try await channel.testingEventLoop.submit {
                    channel.isWritable = writable
                    channel.pipeline.fireChannelWritabilityChanged()
                }.get()
            }
            try await setWritable(false)
            try await connection.send("PING\r\nSUBSCRIBE general\r\n")
            // Time for a confirmation that did not wait to be written.
            try await Task.sleep(for: .milliseconds(300))
            try await setWritable(true)
            let expected = "+PONG\r\n*3\r\n$9\r\nsubscribe\r\n$7\r\ngeneral\r\n:1\r\n"
            #expect(try await connection.replies(atLeast: expected.utf8.count) == expected)
        }
    }

    @Test func everyErrorKindReachesTheClientAsItsContractCode() async throws {
        try await Self.withConnection { connection in
            try await connection.send("POST general hi\r\n")
            #expect(try await connection.replies(atLeast: 1).hasPrefix("-NOAUTH "))
            try await connection.send("AUTH alice@acme wrong-token\r\n")
            #expect(try await connection.replies(atLeast: 1).hasPrefix("-WRONGPASS "))
            try await connection.send("AUTH alice@acme \(connection.token)\r\n")
            #expect(try await connection.replies(atLeast: 5) == "+OK\r\n")
            let cases: [(String, String)] = [
                ("NOSUCH x\r\n", "-ERR unknown command"),
                ("POST bad/room x\r\n", "-INVALID "),
                ("HISTORY r AFTER x\r\n", "-ERR value is not an integer"),
                ("USE acme\r\n", "-NOPERM "),
                ("*2\r\n$4\r\nECHO\r\n$2000000\r\n" + String(repeating: "z", count: 2_000_000) + "\r\n", "-TOOBIG "),
            ]
            for (request, prefix) in cases {
                try await connection.send(request)
                let reply = try await connection.replies(atLeast: 1)
                #expect(reply.hasPrefix(prefix), "\(request.prefix(40)) got \(reply)")
            }
            // Invalid UTF-8 in an argument.
            try await connection.send(
                bytes: Array("*3\r\n$4\r\nPOST\r\n$1\r\nr\r\n$2\r\n".utf8) + [0xC3, 0x28, 13, 10]
            )
            #expect(try await connection.replies(atLeast: 1) == "-INVALID argument is not valid UTF-8\r\n")
            // Still usable after each of them; then broken framing: PROTO, and the connection closes.
            try await connection.send("PING\r\n*1\r\n$x\r\nPING\r\n")
            let last = try await connection.replies(atLeast: 7 + 8)
            #expect(last.hasPrefix("+PONG\r\n-PROTO Protocol error: invalid bulk length\r\n"), "\(last)")
            await connection.task.value
            #expect(!connection.channel.isActive)
        }
    }

    @Test func theCommandTableDecidesWhatNeedsAuthenticationAndWhatIsUnknown() async throws {
        try await Self.withConnection { connection in
            for spec in CommandTable.all where spec.needsAuth {
                try await connection.send("\(spec.name) x\r\n")
                let reply = try await connection.replies(atLeast: 1)
                #expect(reply.hasPrefix("-NOAUTH "), "\(spec.name): \(reply)")
            }
            try await connection.send("FLUSHALL\r\n")
            #expect(try await connection.replies(atLeast: 1).hasPrefix("-ERR unknown command 'FLUSHALL'"))
            try await connection.send("COMMAND COUNT\r\n")
            #expect(try await connection.replies(atLeast: 1) == ":\(CommandTable.all.count)\r\n")
        }
    }

    /// Arguments take every valid UTF-8 word as it is and refuse every invalid one, wherever in
    /// the word the first non-ASCII byte falls (the ASCII fast path reads eight bytes at a time).
    @Test func argumentsAcceptValidUTF8AndRefuseInvalidAtEveryOffset() throws {
        func arguments(_ word: [UInt8]) throws -> Arguments {
            try Arguments([ByteBuffer(string: "ECHO"), ByteBuffer(bytes: word)])
        }
        for prefix in 0...17 {
            let ascii = Array(repeating: UInt8(ascii: "a"), count: prefix)
            for valid in ["", "é", "日本語", "😀", "x"] {
                let word = ascii + Array(valid.utf8) + Array("tail".utf8)
                #expect(try arguments(word)[0].utf8.elementsEqual(word), "\(prefix) + \(valid)")
            }
            // A lone continuation byte, a truncated sequence, an overlong form, a surrogate, 0xFF.
            for invalid: [UInt8] in [[0x80], [0xC3], [0xE6, 0x97], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xFF]] {
                #expect(throws: TenantError.self, "\(prefix) + \(invalid)") {
                    try arguments(ascii + invalid + Array("tail".utf8))
                }
                #expect(throws: TenantError.self, "\(prefix) + \(invalid) at the end") {
                    try arguments(ascii + invalid)
                }
            }
        }
    }

    /// The request path asks the table, never a name of its own, which command a request's first
    /// word names: any case, exact length, no prefix match.
    @Test func theCommandTableNamesEveryCommandTheRequestPathLooksFor() {
        func word(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }
        for name in ["POST", "post", "PoSt"] { #expect(CommandTable.isPost(word(name)), "\(name)") }
        for name in ["POS", "POSTS", "PUSH", "ECHO", ""] { #expect(!CommandTable.isPost(word(name)), "\(name)") }
        for name in ["ECHO", "echo", "eCHo"] { #expect(CommandTable.isEcho(word(name)), "\(name)") }
        for name in ["ECH", "ECHOS", "POST"] { #expect(!CommandTable.isEcho(word(name)), "\(name)") }
        for name in ["SUBSCRIBE", "subscribe", "UNSUBSCRIBE", "unSubscribe"] {
            #expect(CommandTable.delivers(word(name)), "\(name)")
        }
        for name in ["SUBSCRIB", "SUBSCRIBED", "POST", "UNSUBSCRIBEX", "PSUBSCRIBE", "SUNSUBSCRIBE", "XSUBSCRIBE"] {
            #expect(!CommandTable.delivers(word(name)), "\(name)")
        }
        for spec in CommandTable.all where spec.hot != nil {
            #expect(CommandTable.hotSpec(for: word(spec.name.lowercased())) === spec)
        }
        #expect(CommandTable.hotSpec(for: word("USAGE")) == nil, "USAGE is not on the lane")
        // What waits for the connection's POSTs, on the lane and on its task alike.
        #expect(CommandTable.all.filter { !$0.settlesFirst }.map(\.name).sorted() == ["ECHO", "PING", "POST"])
    }

    /// Every command's arity in the table is enforced before its handler runs, with Redis's error.
    @Test func theCommandTableEnforcesEveryArity() async throws {
        try await Self.withConnection { connection in
            try await connection.send("AUTH admin \(EngineFixtures.operatorToken)\r\n")
            #expect(try await connection.replies(atLeast: 1) == "+OK\r\n")
            var tried = 0
            for spec in CommandTable.all {
                var counts: [Int] = []
                if spec.arity.lowerBound > 0 { counts.append(spec.arity.lowerBound - 1) }
                if spec.arity.upperBound < Int.max { counts.append(spec.arity.upperBound + 1) }
                for count in counts {
                    let words = [spec.name] + Array(repeating: "a", count: count)
                    try await connection.send(words.joined(separator: " ") + "\r\n")
                    let reply = try await connection.replies(atLeast: 1)
                    let expected = "-ERR wrong number of arguments for '\(spec.name.lowercased())' command\r\n"
                    #expect(reply == expected, "\(spec.name) with \(count) arguments")
                    tried += 1
                }
            }
            #expect(tried >= 20)
        }
    }

    /// Pipelined POSTs on one connection share group commits (a POST does not wait for the one
    /// before it), and their replies still come back in order, each once its record is durable.
    @Test func aPipelinedRunOfPostsGetsEachItsOwnOutcomeInOrder() async throws {
        try await Self.withConnection { connection in
            try await connection.send("AUTH alice@acme \(connection.token)\r\n")
            #expect(try await connection.replies(atLeast: 5) == "+OK\r\n")
            let id = try #require(await connection.registry.resolve("acme"))
            // One read: a run of POSTs with refusals in it, a path-form POST (the command-by-
            // command path) and a HISTORY that must see every POST before it.
            let big = String(repeating: "x", count: 70_000)
            try await connection.send(
                "POST general a\r\nPOST bad..room x\r\n*3\r\n$4\r\nPOST\r\n$7\r\ngeneral\r\n$70000\r\n\(big)\r\n"
                    + "POST general b\r\n"
                    + "POST /tenant/\(id)/general c\r\nPOST general d\r\nHISTORY general LIMIT 10\r\n"
            )
            let expected = [":1", "-INVALID", "-TOOBIG", ":2", ":3", ":4", "*4"]
            var received = ""
            for _ in 0..<1000 where !received.hasSuffix("$1\r\nd\r\n") {
                received += try await connection.replies(atLeast: 1)
            }
            let lines = received.split(separator: "\r\n").map(String.init)
            for (index, prefix) in expected.enumerated() {
                #expect(lines[index].hasPrefix(prefix), "reply \(index): \(lines[index]) is not \(prefix)")
            }
            #expect(lines.filter { ["a", "b", "c", "d"].contains($0) } == ["a", "b", "c", "d"])
        }
    }

    @Test func pipelinedPostsShareGroupCommits() async throws {
        let disk = FaultyFileSystem()
        try await Self.withConnection(fsync: .always, fileSystem: disk) { connection in
            try await connection.send("AUTH alice@acme \(connection.token)\r\n")
            #expect(try await connection.replies(atLeast: 5) == "+OK\r\n")
            let syncsBefore = disk.calls(.sync)
            let count = 200
            try await connection.send((1...count).map { "POST general m\($0)\r\n" }.joined())
            let expected = (1...count).map { ":\($0)\r\n" }.joined()
            #expect(try await connection.replies(atLeast: expected.utf8.count) == expected)
            let syncs = disk.calls(.sync) - syncsBefore
            // One fdatasync per POST if each waited for the one before; a few group commits now.
            #expect(syncs >= 1 && syncs < count / 2, "\(syncs) fdatasyncs for \(count) pipelined POSTs")
            // And what follows them sees them all.
            try await connection.send("ROOMS\r\n")
            #expect(try await connection.replies(atLeast: 10).contains("general"))
        }
    }
}
