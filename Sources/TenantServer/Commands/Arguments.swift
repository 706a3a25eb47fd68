import NIOCore
import TenantEngine

/// A command's words as strings, each checked to be valid UTF-8.
struct Arguments {
    /// The command name, upper-cased.
    let name: String
    /// The words after the name.
    let words: [String]

    /// - Throws: INVALID when a word is not valid UTF-8.
    init(_ buffers: [ByteBuffer]) throws {
        guard let first = buffers.first else {
            self.name = ""
            self.words = []
            return
        }
        var words: [String] = []
        words.reserveCapacity(buffers.count - 1)
        for buffer in buffers.dropFirst() { words.append(try Self.word(buffer)) }
        self.name = try Self.commandName(first)
        self.words = words
    }

    /// A word as a string. - Throws: INVALID when it is not valid UTF-8.
    ///
    /// ASCII words (room names, keywords, numbers, most texts) skip the validating initializer,
    /// which runs unspecialized in the standard library and looked up its generic metadata on
    /// every word.
    static func word(_ buffer: ByteBuffer) throws -> String {
        let word = buffer.withUnsafeReadableBytes { raw -> String? in
            let bytes = raw.bindMemory(to: UInt8.self)
            if Self.isASCII(bytes) { return String(decoding: bytes, as: UTF8.self) }
            return String(validating: bytes, as: UTF8.self)
        }
        guard let word else { throw TenantError.invalid("argument is not valid UTF-8") }
        return word
    }

    /// Whether every byte is below 0x80, eight at a time.
    private static func isASCII(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let count = bytes.count
        var index = 0
        while index + 8 <= count {
            let chunk = UnsafeRawPointer(base + index).loadUnaligned(as: UInt64.self)
            if chunk & 0x8080_8080_8080_8080 != 0 { return false }
            index += 8
        }
        while index < count {
            if base[index] >= 0x80 { return false }
            index += 1
        }
        return true
    }

    /// The command name upper-cased: ASCII names (every command's) without Unicode case mapping.
    private static func commandName(_ buffer: ByteBuffer) throws -> String {
        let ascii = buffer.withUnsafeReadableBytes { bytes -> String? in
            guard bytes.count <= 32, bytes.allSatisfy({ $0 < 0x80 }) else { return nil }
            return String(unsafeUninitializedCapacity: bytes.count) { output in
                for (index, byte) in bytes.enumerated() {
                    output[index] = byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z") ? byte - 32 : byte
                }
                return bytes.count
            }
        }
        return try ascii ?? Self.word(buffer).uppercased()
    }

    var count: Int { self.words.count }

    subscript(index: Int) -> String { self.words[index] }

    /// The upper-cased word at `index`, for subcommands and keywords.
    func keyword(_ index: Int) -> String? {
        index < self.words.count ? self.words[index].uppercased() : nil
    }

    /// Fails with the Redis arity message unless the count is in range.
    func expect(_ range: ClosedRange<Int>, for command: String) throws {
        guard range.contains(self.words.count) else { throw CommandError.wrongArity(command) }
    }

    /// Parses a non-negative integer argument.
    func unsigned(_ index: Int) throws -> UInt64 {
        guard let value = UInt64(self.words[index]) else {
            throw CommandError("value is not an integer or out of range")
        }
        return value
    }

    /// `[AFTER <name>] [LIMIT <n>]` from `start` on (ROOMS, USER LIST): a page's start and size.
    func page(from start: Int) throws -> (after: String?, limit: Int?) {
        var after: String?
        var limit: Int?
        var index = start
        while index < self.count {
            guard index + 1 < self.count else { throw CommandError.syntax }
            switch self.keyword(index) {
            case "AFTER" where after == nil: after = self[index + 1]
            case "LIMIT" where limit == nil: limit = Int(clamping: try self.unsigned(index + 1))
            default: throw CommandError.syntax
            }
            index += 2
        }
        return (after, limit)
    }
}
