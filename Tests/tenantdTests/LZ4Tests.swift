import LZ4
import Testing

@Suite("LZ4")
struct LZ4Tests {
    static let messages: [String] = (0..<2000).map { index in
        "user\(index % 7) says: the quick brown fox jumps over the lazy dog, message number \(index)"
    }

    @Test func blockRoundTrip() throws {
        let input = Array(String(repeating: "tenantd block ", count: 500).utf8)
        let compressed = try LZ4Block.compress(input)
        #expect(compressed.count < input.count / 4)
        let output = try LZ4Block.decompress(compressed, decodedSize: input.count, maxDecodedSize: input.count)
        #expect(output == input)
    }

    @Test func blockRefusesDeclaredSizeOverBound() throws {
        let compressed = try LZ4Block.compress(Array("hello".utf8))
        #expect(throws: LZ4Error.declaredSizeTooLarge(1 << 30)) {
            try LZ4Block.decompress(compressed, decodedSize: 1 << 30, maxDecodedSize: 1 << 20)
        }
    }

    @Test func blockDetectsWrongDeclaredSize() throws {
        let compressed = try LZ4Block.compress(Array("hello hello hello".utf8))
        #expect(throws: LZ4Error.self) {
            try LZ4Block.decompress(compressed, decodedSize: 5, maxDecodedSize: 100)
        }
    }

    @Test func streamRoundTripAcrossManyWraps() throws {
        let compressor = LZ4StreamCompressor(maxBlockSize: 1 << 20)
        var blocks: [[UInt8]] = []
        var inputs: [[UInt8]] = []
        var generator = SystemRandomNumberGenerator()
        for index in 0..<3000 {
            var input = Array(Self.messages[index % Self.messages.count].utf8)
            // Some large, some random blocks force the history buffer to wrap and grow.
            if index % 97 == 0 { input += (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &generator) } }
            var block: [UInt8] = []
            try input.withUnsafeBytes { _ = try compressor.compress($0, appendingTo: &block) }
            blocks.append(block)
            inputs.append(input)
        }
        let decompressor = LZ4StreamDecompressor(maxBlockSize: 1 << 20)
        for (block, input) in zip(blocks, inputs) {
            let output = try block.withUnsafeBytes { raw in
                try decompressor.decompress(raw, decodedSize: input.count) { Array($0) }
            }
            #expect(output == input)
        }
    }

    @Test func streamingCompressesShortMessagesAgainstEarlierOnes() throws {
        let compressor = LZ4StreamCompressor(maxBlockSize: 1 << 16)
        var linked = 0
        var independent = 0
        var raw = 0
        for message in Self.messages {
            let input = Array(message.utf8)
            raw += input.count
            var block: [UInt8] = []
            try input.withUnsafeBytes { _ = try compressor.compress($0, appendingTo: &block) }
            linked += block.count
            independent += try LZ4Block.compress(input).count
        }
        #expect(linked * 3 < raw)
        #expect(linked * 2 < independent)
    }

    @Test func streamResetStartsIndependentStream() throws {
        let compressor = LZ4StreamCompressor(maxBlockSize: 1 << 16)
        var first: [UInt8] = []
        var second: [UInt8] = []
        let input = Array(Self.messages[0].utf8)
        try input.withUnsafeBytes { _ = try compressor.compress($0, appendingTo: &first) }
        compressor.reset()
        try input.withUnsafeBytes { _ = try compressor.compress($0, appendingTo: &second) }
        #expect(first == second)
        let decompressor = LZ4StreamDecompressor(maxBlockSize: 1 << 16)
        let output = try second.withUnsafeBytes {
            try decompressor.decompress($0, decodedSize: input.count) { Array($0) }
        }
        #expect(output == input)
    }

    @Test func streamRefusesOversizedInputAndDeclaredSize() throws {
        let compressor = LZ4StreamCompressor(maxBlockSize: 16)
        var block: [UInt8] = []
        #expect(throws: LZ4Error.inputTooLarge(17)) {
            try [UInt8](repeating: 1, count: 17).withUnsafeBytes {
                _ = try compressor.compress($0, appendingTo: &block)
            }
        }
        let decompressor = LZ4StreamDecompressor(maxBlockSize: 16)
        #expect(throws: LZ4Error.declaredSizeTooLarge(1 << 20)) {
            try [UInt8](repeating: 0, count: 4).withUnsafeBytes { raw in
                try decompressor.decompress(raw, decodedSize: 1 << 20) { _ in () }
            }
        }
    }
}
