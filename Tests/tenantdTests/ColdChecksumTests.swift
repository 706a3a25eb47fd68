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

        // Flip bytes all through the cold file, through the descriptor the store holds.
        let files = Self.coldFiles(in: directory.path)
        #expect(files.count == 1)
        let file = try #require(files.first)
        let handle = try #require(FileHandle(forUpdatingAtPath: file))
        let size = try handle.seekToEnd()
        #expect(size > 0)
        for offset in stride(from: UInt64(7), to: size, by: 997) {
            try handle.seek(toOffset: offset)
            let byte = try #require(try handle.read(upToCount: 1)?.first)
            try handle.seek(toOffset: offset)
            try handle.write(contentsOf: Data([byte ^ 0x5A]))
        }
        try handle.close()

        var failed = 0
        for index in 0..<room.coldChunkCount {
            do {
                _ = try room.columns(ofChunk: index, cached: false)
                Issue.record("cold chunk \(index) read back although its bytes were altered")
            } catch {
                failed += 1
            }
        }
        #expect(failed == room.coldChunkCount)
        // What HISTORY reads is either an error or the exact messages.
        for start in stride(from: 0, to: expected.count, by: 50) {
            if let page = try? room.history(after: UInt64(start), before: nil, limit: 50) {
                #expect(page == Array(expected[start..<min(expected.count, start + 50)]))
            }
        }
    }
}
