import NIOCore

/// Parses requests, RESP arrays of bulk strings and inline commands alike, from a byte stream.
///
/// A value-type state machine in the manner of Redis's `processMultibulkBuffer` and
/// `processInlineBuffer`: feed it the connection's buffer, it consumes whole elements only and
/// keeps its place between calls. Limits are checked before anything is allocated.
public struct RESPRequestParser: Sendable {
    /// What the parser found.
    public enum Action: Sendable, Equatable {
        /// A whole command: its words, the command name first.
        case command([ByteBuffer])
        /// The buffer holds no whole command yet.
        case needMoreData
        /// A whole command was read and skipped, because an argument was over ``Limits/maxBulkLength``.
        case tooBig(String)
        /// The framing is broken: the connection must be answered and closed.
        case protocolError(String)
    }

    /// The bounds the parser enforces.
    public struct Limits: Sendable, Hashable {
        /// The longest bulk string kept (`proto-max-bulk-len`); longer ones (up to 512 MiB) are
        /// skipped and answered `tooBig`.
        public var maxBulkLength: Int
        /// The longest inline line (64 KiB, as Redis's `PROTO_INLINE_MAX_SIZE`).
        public var maxInlineLength: Int
        /// The most arguments in one array.
        public var maxArgumentCount: Int
        /// The most bytes one request's kept arguments may take together (`client-query-buffer-limit`);
        /// each argument also counts ``RESPLimits/argumentOverhead`` bytes, so a million empty arguments count too.
        public var maxRequestBytes: Int
        /// Before authentication: the most arguments of one request (Redis 7's rule: 10).
        public var unauthenticatedArgumentCount: Int
        /// Before authentication: the longest argument (Redis 7's rule: 16 KiB).
        public var unauthenticatedBulkLength: Int

        /// Creates limits; the defaults are the contract's.
        public init(
            maxBulkLength: Int = RESPLimits.maxBulkLength,
            maxInlineLength: Int = RESPLimits.maxInlineLength,
            maxArgumentCount: Int = RESPLimits.maxArgumentCount,
            maxRequestBytes: Int = RESPLimits.maxRequestBytes,
            unauthenticatedArgumentCount: Int = RESPLimits.unauthenticatedArgumentCount,
            unauthenticatedBulkLength: Int = RESPLimits.unauthenticatedBulkLength
        ) {
            self.maxBulkLength = maxBulkLength
            self.maxInlineLength = maxInlineLength
            self.maxArgumentCount = maxArgumentCount
            self.maxRequestBytes = maxRequestBytes
            self.unauthenticatedArgumentCount = unauthenticatedArgumentCount
            self.unauthenticatedBulkLength = unauthenticatedBulkLength
        }
    }

    private struct ArrayState: Sendable {
        var remaining: Int
        var arguments: [ByteBuffer]
        var bulkLength: Int?
        var skipping = 0
        var tooBig = false
        /// Bytes the kept arguments take, overhead included, against ``Limits/maxRequestBytes``.
        var bytes = 0
    }

    private var array: ArrayState?
    /// A finished command's words given back by ``recycle(_:)``: the next command's words reuse
    /// its storage when nothing else holds it any more, instead of allocating an array each.
    private var spare: [ByteBuffer] = []
    /// The parser's limits.
    public let limits: Limits
    /// False applies the stricter limits of an unauthenticated client, whose requests can then
    /// never make the server hold more than about 160 KiB.
    public var authenticated: Bool

    /// Creates a parser.
    /// - Parameters:
    ///   - limits: the bounds.
    ///   - authenticated: false (a new connection) until the client has authenticated.
    public init(limits: Limits = Limits(), authenticated: Bool = true) {
        self.limits = limits
        self.authenticated = authenticated
    }

    /// True while a request is partly read.
    public var isInsideRequest: Bool { self.array != nil }

    /// True when the last ``next(_:)`` returned a protocol error for a limit of unauthenticated
    /// clients only: a caller that may still authenticate the client (an AUTH before this request
    /// has not been answered yet) can restore its copy of the parser and the buffer and retry.
    public private(set) var hitUnauthenticatedLimit = false

    /// Reads the next command out of `buffer`, consuming only what it has fully parsed.
    /// - Complexity: O(n) in the bytes consumed.
    public mutating func next(_ buffer: inout ByteBuffer) -> Action {
        self.hitUnauthenticatedLimit = false
        while true {
            if self.array != nil {
                return self.continueArray(&buffer)
            }
            guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return .needMoreData }
            if first == UInt8(ascii: "*") {
                let parsed: Int
                switch Self.readCount(&buffer, limit: RESPLimits.maxCountLine) {
                case .incomplete:
                    if buffer.readableBytes > RESPLimits.maxCountLine {
                        return .protocolError("Protocol error: too big mbulk count string")
                    }
                    return .needMoreData
                case .invalid:
                    return .protocolError("Protocol error: invalid multibulk length")
                case .value(let value):
                    parsed = value
                }
                guard parsed <= self.limits.maxArgumentCount else {
                    return .protocolError("Protocol error: invalid multibulk length")
                }
                let count = parsed
                if !self.authenticated && count > self.limits.unauthenticatedArgumentCount {
                    self.hitUnauthenticatedLimit = true
                    return .protocolError("Protocol error: unauthenticated multibulk length")
                }
                if count <= 0 { continue }
                var arguments = self.spare
                self.spare = []
                // Without an allocation when the recycled array is no longer held elsewhere.
                arguments.removeAll(keepingCapacity: true)
                arguments.reserveCapacity(min(count, RESPLimits.spareCapacity))
                self.array = ArrayState(remaining: count, arguments: arguments)
            } else {
                let view = buffer.readableBytesView
                guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
                    if view.count > self.limits.maxInlineLength {
                        return .protocolError("Protocol error: too big inline request")
                    }
                    return .needMoreData
                }
                let length = newline - view.startIndex
                if !self.authenticated && length > self.limits.unauthenticatedBulkLength
                    && length <= self.limits.maxInlineLength
                {
                    self.hitUnauthenticatedLimit = true
                    return .protocolError("Protocol error: too big inline request")
                }
                if length > self.limits.maxInlineLength {
                    return .protocolError("Protocol error: too big inline request")
                }
                var line = buffer.readBytes(length: length)!
                buffer.moveReaderIndex(forwardBy: 1)
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                guard let words = InlineSplitter.split(line) else {
                    return .protocolError("Protocol error: unbalanced quotes in request")
                }
                if words.isEmpty { continue }
                if !self.authenticated && words.count > self.limits.unauthenticatedArgumentCount {
                    self.hitUnauthenticatedLimit = true
                    return .protocolError("Protocol error: unauthenticated multibulk length")
                }
                return .command(words.map { ByteBuffer(bytes: $0) })
            }
        }
    }

    /// Gives back the words of a command the caller is done with and keeps no copy of: the next
    /// command's words reuse their array's storage (a request that allocates nothing but its
    /// reply on the synchronous lane). Words still held elsewhere cost what they always did.
    public mutating func recycle(_ words: [ByteBuffer]) {
        if words.capacity <= RESPLimits.spareCapacity { self.spare = words }
    }

    /// Lets go of the recycled words' bytes, keeping the array: call it when the input buffer is
    /// drained, so that nothing holds the last read's buffer and the channel can read into it
    /// again.
    public mutating func releaseRecycled() {
        self.spare.removeAll(keepingCapacity: true)
    }

    private mutating func continueArray(_ buffer: inout ByteBuffer) -> Action {
        while self.array!.remaining > 0 {
            if self.array!.skipping > 0 {
                let skipped = min(self.array!.skipping, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: skipped)
                self.array!.skipping -= skipped
                if self.array!.skipping > 0 { return .needMoreData }
                self.array!.remaining -= 1
                continue
            }
            if let length = self.array!.bulkLength {
                guard buffer.readableBytes >= length + 2 else { return .needMoreData }
                let argument = buffer.readSlice(length: length)!
                buffer.moveReaderIndex(forwardBy: 2)
                self.array!.arguments.append(argument)
                self.array!.bulkLength = nil
                self.array!.remaining -= 1
                continue
            }
            guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return .needMoreData }
            guard first == UInt8(ascii: "$") else {
                self.array = nil
                return .protocolError("Protocol error: expected '$', got '\(Self.printable(first))'")
            }
            let length: Int
            switch Self.readCount(&buffer, limit: RESPLimits.maxCountLine) {
            case .incomplete:
                if buffer.readableBytes > RESPLimits.maxCountLine {
                    self.array = nil
                    return .protocolError("Protocol error: too big bulk count string")
                }
                return .needMoreData
            case .invalid:
                self.array = nil
                return .protocolError("Protocol error: invalid bulk length")
            case .value(let value):
                guard value >= 0, value <= RESPLimits.protocolMaxBulk else {
                    self.array = nil
                    return .protocolError("Protocol error: invalid bulk length")
                }
                length = value
            }
            if !self.authenticated && length > self.limits.unauthenticatedBulkLength {
                self.array = nil
                self.hitUnauthenticatedLimit = true
                return .protocolError("Protocol error: unauthenticated bulk length")
            }
            if length > self.limits.maxBulkLength {
                self.array!.tooBig = true
                self.array!.skipping = length + 2
            } else {
                let cost = length + RESPLimits.argumentOverhead
                guard self.limits.maxRequestBytes - self.array!.bytes >= cost else {
                    self.array = nil
                    return .protocolError("Protocol error: request over client-query-buffer-limit")
                }
                self.array!.bytes += cost
                self.array!.bulkLength = length
            }
        }
        let finished = self.array!
        self.array = nil
        if finished.tooBig {
            return .tooBig("request argument over \(self.limits.maxBulkLength) bytes")
        }
        return .command(finished.arguments)
    }

    /// Reads a CRLF-terminated line (without the CRLF), or nil when none is complete within `limit`.
    /// What a count line (`*<n>\r\n`, `$<n>\r\n`) held.
    private enum CountLine {
        case incomplete
        case invalid
        case value(Int)
    }

    /// Reads a count line: its prefix byte, then an integer, up to the `\r` found within `limit`
    /// bytes (and one byte after it), in place: no view, no copy, no retain of the buffer.
    private static func readCount(_ buffer: inout ByteBuffer, limit: Int) -> CountLine {
        let (line, consumed): (CountLine, Int) = buffer.withUnsafeReadableBytes { bytes in
            let end = min(bytes.count, limit + 2)
            var cr = 0
            while cr < end && bytes[cr] != UInt8(ascii: "\r") { cr += 1 }
            guard cr < end, cr + 1 < bytes.count else { return (.incomplete, 0) }
            let digits = UnsafeRawBufferPointer(rebasing: bytes[min(1, cr)..<cr])
            return (Self.parseInteger(digits).map(CountLine.value) ?? .invalid, cr + 2)
        }
        if consumed > 0 { buffer.moveReaderIndex(forwardBy: consumed) }
        return line
    }

    static func parseInteger(_ bytes: some Collection<UInt8>) -> Int? {
        guard !bytes.isEmpty, bytes.count <= RESPLimits.maxCountDigits else { return nil }
        var negative = false
        var value = 0
        for (index, byte) in bytes.enumerated() {
            if index == 0 && byte == UInt8(ascii: "-") && bytes.count > 1 {
                negative = true
                continue
            }
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
            let (multiplied, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (added, overflow2) = multiplied.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            value = added
        }
        return negative ? -value : value
    }

    private static func printable(_ byte: UInt8) -> String {
        (32..<127).contains(byte) ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
    }
}
