import Foundation
import TestSupport
import Testing
import WAL

@testable import TenantEngine

/// Properties of the decoders issue 25 changed, over random inputs: the catalog's credential keys
/// round-trip, a checkpoint body of any compressibility is written within the 64-to-1 bound and
/// reads back whole, and a body cut or flipped anywhere is refused or read, never a crash.
@Suite("Decoder properties")
struct DecoderPropertyTests {
    @Test func catalogsWithCredentialKeysRoundTrip() throws {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<50 {
            var catalog = Catalog()
            var expected: [String: Set<CredentialKey>?] = [:]
            for index in 0..<Int.random(in: 0...20, using: &generator) {
                let id = "t\(round)x\(index)"
                catalog.insert(
                    TenantMetadata(
                        tenantID: id,
                        name: "Tenant \(index) ✓",
                        subdomain: Bool.random(using: &generator) ? "s\(round)y\(index)" : "",
                        plan: .free,
                        limits: Plan.free.defaultLimits,
                        now: Int64.random(in: 0...1_900_000_000_000, using: &generator)
                    )
                )
                if Bool.random(using: &generator) {
                    let keys = Set(
                        (0..<Int.random(in: 0...30, using: &generator)).map { _ in
                            CredentialKey(value: UInt64.random(in: .min ... .max, using: &generator))
                        }
                    )
                    catalog.setCredentials(keys, for: id)
                    expected[id] = keys
                } else {
                    expected[id] = .some(nil)
                }
            }
            let decoded = try #require(Catalog.decode(bytes: try catalog.encoded()))
            #expect(decoded.entries == catalog.entries)
            for (id, keys) in expected {
                #expect(decoded.credentials[id] == keys, "tenant \(id)")
            }
        }
    }

    /// A body of `count` bytes: random (incompressible), a short pattern repeated (lz4 packs it
    /// up to 255 to 1), or a mix.
    static func body(count: Int, kind: Int, using generator: inout SystemRandomNumberGenerator) -> [UInt8] {
        switch kind {
        case 0: return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
        case 1: return (0..<count).map { UInt8(truncatingIfNeeded: $0 % 7) }
        default:
            return (0..<count).map { index in
                index % 4096 < 64 ? UInt8.random(in: 0...255, using: &generator) : 0
            }
        }
    }

    @Test func checkpointBlocksOfAnyCompressibilityStayWithinTheBoundAndReadBack() throws {
        var generator = SystemRandomNumberGenerator()
        for kind in 0..<3 {
            for count in [0, 1, 63, 64, 65, 4096, 100_000, (4 << 20) + 17] {
                let body = Self.body(count: count, kind: kind, using: &generator)
                let file = try Checkpoint.encode(body: body, lsn: 9)
                #expect(body.count <= file.count * Checkpoint.maxExpansion, "kind \(kind), \(count) bytes")
                var reader = try CheckpointReader(source: CheckpointBytes(bytes: file), path: "p.ckpt")
                #expect(reader.bodySize == body.count)
                #expect(try reader.body() == body, "kind \(kind), \(count) bytes")
            }
        }
    }

    @Test func aCheckpointCutOrFlippedAnywhereIsRefusedOrReadNeverACrash() throws {
        var generator = SystemRandomNumberGenerator()
        let body = Self.body(count: 300_000, kind: 2, using: &generator)
        let file = try Checkpoint.encode(body: body, lsn: 9)
        for _ in 0..<300 {
            var damaged = file
            if Bool.random(using: &generator) {
                damaged.removeLast(Int.random(in: 1..<file.count, using: &generator))
            } else {
                let index = Int.random(in: 0..<file.count, using: &generator)
                damaged[index] ^= UInt8.random(in: 1...255, using: &generator)
            }
            do {
                var reader = try CheckpointReader(source: CheckpointBytes(bytes: damaged), path: "d.ckpt")
                let read = try reader.body()
                // Read whole: only a change the checksums cannot see (none here) would differ.
                #expect(read == body)
            } catch {
                #expect(error is WALError, "\(error)")
            }
        }
    }
}
