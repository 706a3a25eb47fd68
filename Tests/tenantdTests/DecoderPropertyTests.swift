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

/// Random bytes into the decoders issue 25 added: refused or decoded, never a crash, never more
/// than the bytes allow.
@Suite("Decoders of hostile bytes")
struct HostileBytesTests {
    @Test func theCredentialJournalDecodesRandomBytesSafely() {
        var generator = SystemRandomNumberGenerator()
        let valid = CredentialJournal.encode(
            id: "abc",
            change: CredentialChange(removed: CredentialKey(value: 5), added: CredentialKey(value: 6))
        )
        for _ in 0..<2000 {
            var bytes = (0..<Int.random(in: 0...200, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { bytes = valid + bytes }
            let records = CredentialJournal.decode(bytes)
            // A record takes at least its header and a one-byte id's payload.
            #expect(records.count <= bytes.count / (8 + 4 + 1 + 1 + 16))
            if bytes.starts(with: valid) { #expect(records.first?.0 == "abc") }
        }
    }

    @Test func theMarkerKeysDecodeRandomTextSafely() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefxyz,,-".utf8)
        for _ in 0..<2000 {
            let text = String(
                decoding: (0..<Int.random(in: 0...120, using: &generator)).map { _ in
                    alphabet[Int.random(in: 0..<alphabet.count, using: &generator)]
                },
                as: UTF8.self
            )
            if let keys = Departure.decodeKeys(text) {
                #expect(keys.count <= text.split(separator: ",").count + 1)
            }
        }
        let keys: Set<CredentialKey> = [CredentialKey(value: 1), CredentialKey(value: .max)]
        let text = keys.map { String($0.value, radix: 16) }.joined(separator: ",")
        #expect(Departure.decodeKeys(text) == keys)
    }
}
