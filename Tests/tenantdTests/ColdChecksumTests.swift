import Foundation
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// Issue 25, finding 8: a cold chunk carries a CRC-32C; bytes altered in the cold file come back
/// as an error (IOERR through HISTORY), never as altered message text.
@Suite("Cold chunk checksums", .serialized)
struct ColdChecksumTests {
    /// The descriptors of this process's (unlinked) cold files in `directory`.
    static func coldFiles(in directory: String) -> [String] {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.map { "/proc/self/fd/" + $0 }.filter { path in
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
            // "<directory>/.cold-<pid>-… (deleted)": the file is unlinked as soon as it is open.
            let name = (directory as NSString).lastPathComponent
            return target.contains(name + "/.cold-\(getpid())-")
        }
    }

    /// Where `needle` first occurs in `haystack`.
    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if haystack[start..<(start + needle.count)].elementsEqual(needle) { return start }
        }
        return nil
    }

    @Test func aDamagedColdChunkIsAnErrorNeverAlteredText() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let budget = MemoryBudget(maxMemory: 256 << 10)
        let posts = try MemoryBudgetTests.posts()
        var state = TenantState(cold: ColdStore(budget: budget, directory: directory.path, logger: nil))
        for post in posts { try state.apply(.message(room: post.room, post.message)) }
        let room = try #require(state.rooms["general"])
        #expect(room.coldChunkCount > 0)
        let expected = posts.filter { $0.room == "general" }.map(\.message)
        // Read back whole first (checksums pass), with the chunk cache emptied by a fresh budget's
        // worth of other reads being impossible here: read uncached instead.
        #expect(try (0..<room.coldChunkCount).allSatisfy { (try? room.columns(ofChunk: $0, cached: false)) != nil })

        // Change one letter of message texts where lz4 left them as literals in the cold file:
        // without a checksum the chunk would decode, with the text altered.
        let files = Self.coldFiles(in: directory.path)
        #expect(files.count == 1)
        let file = try #require(files.first)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        var altered = 0
        for message in expected where altered < 8 {
            let needle = Array(message.text.utf8.prefix(24))
            guard needle.count == 24, let at = Self.find(needle, in: bytes) else { continue }
            let handle = try #require(FileHandle(forUpdatingAtPath: file))
            try handle.seek(toOffset: UInt64(at + 12))
            try handle.write(contentsOf: Data([bytes[at + 12] ^ 0x20]))
            try handle.close()
            altered += 1
        }
        #expect(altered > 0, "no message text found as a literal in the cold file")

        var failed = 0
        for index in 0..<room.coldChunkCount {
            do {
                _ = try room.columns(ofChunk: index, cached: false)
            } catch {
                failed += 1
            }
        }
        // Every chunk a changed letter is in fails; none decodes with the letter changed (below).
        #expect(failed > 0)
        // What HISTORY reads is either an error or the exact messages.
        for start in stride(from: 0, to: expected.count, by: 50) {
            if let page = try? room.history(after: UInt64(start), before: nil, limit: 50) {
                #expect(page == Array(expected[start..<min(expected.count, start + 50)]))
            }
        }
    }
}
