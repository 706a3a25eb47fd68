import NIOCore
import RESP
import Testing

@Suite("RESP parser and encoder")
struct RESPParserTests {
    static func parseAll(_ text: String, limits: RESPRequestParser.Limits = .init()) -> [RESPRequestParser.Action] {
        parseAll(Array(text.utf8), limits: limits)
    }

    static func parseAll(_ bytes: [UInt8], limits: RESPRequestParser.Limits = .init()) -> [RESPRequestParser.Action] {
        var parser = RESPRequestParser(limits: limits)
        var buffer = ByteBuffer(bytes: bytes)
        var actions: [RESPRequestParser.Action] = []
        while true {
            let action = parser.next(&buffer)
            if action == .needMoreData { break }
            actions.append(action)
            if case .protocolError = action { break }
        }
        return actions
    }

    static func command(_ words: String...) -> RESPRequestParser.Action {
        .command(words.map { ByteBuffer(string: $0) })
    }

    /// Words given back to the parser are reused only once nothing else holds them: a caller that
    /// kept them still sees its command, and every later command is parsed whole, whatever its
    /// size against the recycled array's.
    @Test func recycledWordsNeverChangeACommandStillHeld() {
        var parser = RESPRequestParser()
        var buffer = ByteBuffer(
            string: "*3\r\n$4\r\nPOST\r\n$1\r\na\r\n$2\r\nhi\r\n*1\r\n$4\r\nPING\r\n"
                + "*4\r\n$7\r\nHISTORY\r\n$1\r\na\r\n$5\r\nLIMIT\r\n$1\r\n5\r\n*2\r\n$4\r\nECHO\r\n$1\r\nz\r\n"
        )
        guard case .command(let post) = parser.next(&buffer) else {
            Issue.record("POST")
            return
        }
        let kept = post
        parser.recycle(post)
        #expect(parser.next(&buffer) == Self.command("PING"))
        #expect(kept.map { String(buffer: $0) } == ["POST", "a", "hi"], "the held command is untouched")
        // Recycled and let go of: reused for a longer command, then a shorter one.
        guard case .command(let ping) = Self.command("PING") else { return }
        parser.recycle(ping)
        parser.releaseRecycled()
        guard case .command(let history) = parser.next(&buffer) else {
            Issue.record("HISTORY")
            return
        }
        #expect(history.map { String(buffer: $0) } == ["HISTORY", "a", "LIMIT", "5"])
        parser.recycle(history)
        #expect(parser.next(&buffer) == Self.command("ECHO", "z"))
        #expect(parser.next(&buffer) == .needMoreData)
    }

    @Test func multibulkCommand() {
        #expect(Self.parseAll("*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n") == [Self.command("PING", "hello")])
    }

    @Test func pipelinedMixOfMultibulkAndInline() {
        let input = "*1\r\n$4\r\nPING\r\nPOST room \"hi there\"\r\n*3\r\n$4\r\nPOST\r\n$1\r\nr\r\n$0\r\n\r\n"
        #expect(
            Self.parseAll(input) == [
                Self.command("PING"), Self.command("POST", "room", "hi there"), Self.command("POST", "r", ""),
            ]
        )
    }

    @Test func byteByByteFeedingGivesTheSameCommands() {
        let input = Array("*3\r\n$4\r\nPOST\r\n$7\r\ngeneral\r\n$11\r\nhello world\r\nPING\r\n".utf8)
        var parser = RESPRequestParser()
        var buffer = ByteBuffer()
        var actions: [RESPRequestParser.Action] = []
        for byte in input {
            buffer.writeInteger(byte)
            while case let action = parser.next(&buffer), action != .needMoreData { actions.append(action) }
        }
        #expect(actions == [Self.command("POST", "general", "hello world"), Self.command("PING")])
    }

    @Test func binarySafeBulkStrings() {
        var bytes = Array("*2\r\n$4\r\nECHO\r\n$4\r\n".utf8)
        bytes += [0, 13, 10, 255]
        bytes += [13, 10]
        #expect(Self.parseAll(bytes) == [.command([ByteBuffer(string: "ECHO"), ByteBuffer(bytes: [0, 13, 10, 255])])])
    }

    @Test(arguments: [
        ("SET k \"a\\nb\"\r\n", ["SET", "k", "a\nb"]),
        ("SET k \"\\x41\\x7a\\t\\\\\\\"\"\r\n", ["SET", "k", "Az\t\\\""]),
        ("SET k 'it\\'s'\r\n", ["SET", "k", "it's"]),
        ("  PING   \n", ["PING"]),
        ("SET k \"\"\r\n", ["SET", "k", ""]),
        ("a\"b c\"\r\n", ["ab c"]),
    ])
    func inlineQuotingLikeRedis(input: String, words: [String]) {
        #expect(Self.parseAll(input) == [.command(words.map { ByteBuffer(string: $0) })])
    }

    @Test(arguments: ["SET k \"unbalanced\r\n", "SET k \"a\"b\r\n", "SET k 'open\r\n", "SET k 'a'b\r\n"])
    func unbalancedQuotesAreProtocolErrors(input: String) {
        #expect(Self.parseAll(input) == [.protocolError("Protocol error: unbalanced quotes in request")])
    }

    @Test func emptyLinesAndEmptyArraysAreIgnored() {
        #expect(Self.parseAll("\r\n\n*0\r\n*-1\r\nPING\r\n") == [Self.command("PING")])
    }

    @Test(arguments: [
        ("*abc\r\n", "Protocol error: invalid multibulk length"),
        ("*2000000\r\n", "Protocol error: invalid multibulk length"),
        ("*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
        ("*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
        ("*1\r\n$9999999999\r\n", "Protocol error: invalid bulk length"),
        ("*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
        ("*2\r\n$4\r\nPING\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
    ])
    func malformedFramingIsAProtocolError(input: String, message: String) {
        #expect(Self.parseAll(input).last == .protocolError(message))
    }

    @Test func overlongInlineLineIsAProtocolErrorBeforeItEnds() {
        let limits = RESPRequestParser.Limits(maxInlineLength: 1024)
        #expect(
            Self.parseAll(String(repeating: "a", count: 2000), limits: limits).last
                == .protocolError("Protocol error: too big inline request")
        )
    }

    @Test func overlongCountLineIsAProtocolError() {
        #expect(
            Self.parseAll("*" + String(repeating: "1", count: 70_000)).last
                == .protocolError("Protocol error: too big mbulk count string")
        )
    }

    @Test func oversizedBulkIsSkippedAndTheNextCommandStillParses() {
        let limits = RESPRequestParser.Limits(maxBulkLength: 10)
        let big = String(repeating: "x", count: 50)
        let input = "*3\r\n$4\r\nPOST\r\n$1\r\nr\r\n$50\r\n\(big)\r\n*1\r\n$4\r\nPING\r\n"
        let actions = Self.parseAll(input, limits: limits)
        #expect(actions.count == 2)
        if case .tooBig = actions.first {} else { Issue.record("expected tooBig, got \(actions)") }
        #expect(actions.last == Self.command("PING"))
    }

    @Test func encoderRESP2AndRESP3() {
        func encoded(_ value: RESPValue, _ version: RESPVersion) -> String {
            String(buffer: RESPEncoder.encode(value, version: version))
        }
        #expect(encoded(.ok, .resp2) == "+OK\r\n")
        #expect(encoded(.error("ERR bad\r\nthing"), .resp2) == "-ERR bad  thing\r\n")
        #expect(encoded(.integer(-42), .resp2) == ":-42\r\n")
        #expect(encoded(.bulkString("héllo"), .resp2) == "$6\r\nhéllo\r\n")
        #expect(encoded(.null, .resp2) == "$-1\r\n")
        #expect(encoded(.null, .resp3) == "_\r\n")
        let map = RESPValue.map([("a", .integer(1))])
        #expect(encoded(map, .resp2) == "*2\r\n$1\r\na\r\n:1\r\n")
        #expect(encoded(map, .resp3) == "%1\r\n$1\r\na\r\n:1\r\n")
        #expect(encoded(.push([.bulkString("x")]), .resp3) == ">1\r\n$1\r\nx\r\n")
        #expect(encoded(.push([.bulkString("x")]), .resp2) == "*1\r\n$1\r\nx\r\n")
        #expect(encoded(.array([]), .resp2) == "*0\r\n")
    }
}
