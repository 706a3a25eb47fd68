import CLZ4

/// Independent lz4 blocks: each compresses and decompresses on its own.
public enum LZ4Block {
    /// The largest input liblz4 accepts in one block.
    public static let maxInputSize = Int(LZ4_MAX_INPUT_SIZE)

    /// The worst-case compressed size of `size` input bytes.
    public static func compressBound(_ size: Int) -> Int {
        Int(LZ4_compressBound(Int32(clamping: size)))
    }

    /// Compresses `input` into one independent block.
    /// - Parameter input: the bytes to compress, at most ``maxInputSize``.
    /// - Returns: the compressed block.
    /// - Throws: ``LZ4Error`` when the input is too large.
    public static func compress(_ input: [UInt8]) throws -> [UInt8] {
        try self.compress(input) { source, destination, size, capacity in
            LZ4_compress_default(source, destination, size, capacity)
        }
    }

    /// Compresses `input` into one independent block with lz4's high-compression mode: slower to
    /// write, as fast to read, and still plain lz4 to every decoder.
    /// - Parameters:
    ///   - input: the bytes to compress, at most ``maxInputSize``.
    ///   - level: 1-12 (9 is lz4hc's default).
    /// - Returns: the compressed block.
    /// - Throws: ``LZ4Error`` when the input is too large.
    public static func compressHC(_ input: [UInt8], level: Int32 = 9) throws -> [UInt8] {
        try self.compress(input) { source, destination, size, capacity in
            LZ4_compress_HC(source, destination, size, capacity, level)
        }
    }

    private static func compress(
        _ input: [UInt8],
        with codec: (UnsafePointer<CChar>?, UnsafeMutablePointer<CChar>, Int32, Int32) -> Int32
    ) throws -> [UInt8] {
        try input.withUnsafeBytes { src in
            guard src.count <= maxInputSize else { throw LZ4Error.inputTooLarge(src.count) }
            let bound = compressBound(src.count)
            var output = [UInt8](repeating: 0, count: bound)
            let written = output.withUnsafeMutableBytes { dst in
                codec(
                    src.baseAddress?.assumingMemoryBound(to: CChar.self),
                    dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                    Int32(src.count),
                    Int32(bound)
                )
            }
            guard written > 0 || src.isEmpty else { throw LZ4Error.compressionFailed }
            output.removeLast(bound - Int(written))
            return output
        }
    }

    /// Decompresses one independent block whose decoded size is known.
    /// - Parameters:
    ///   - input: the compressed block.
    ///   - decodedSize: the exact decoded size, checked against `maxDecodedSize` before allocating.
    ///   - maxDecodedSize: the caller's bound on `decodedSize`.
    /// - Returns: the decoded bytes.
    /// - Throws: ``LZ4Error`` when the size is out of bounds or the block is damaged.
    public static func decompress(
        _ input: [UInt8],
        decodedSize: Int,
        maxDecodedSize: Int
    ) throws -> [UInt8] {
        guard decodedSize >= 0, decodedSize <= maxDecodedSize, decodedSize <= maxInputSize else {
            throw LZ4Error.declaredSizeTooLarge(decodedSize)
        }
        return try input.withUnsafeBytes { src in
            var output = [UInt8](repeating: 0, count: decodedSize)
            let produced = output.withUnsafeMutableBytes { dst in
                LZ4_decompress_safe(
                    src.baseAddress?.assumingMemoryBound(to: CChar.self),
                    dst.baseAddress?.assumingMemoryBound(to: CChar.self),
                    Int32(src.count),
                    Int32(decodedSize)
                )
            }
            guard produced >= 0 else { throw LZ4Error.corruptInput }
            guard Int(produced) == decodedSize else {
                throw LZ4Error.sizeMismatch(expected: decodedSize, actual: Int(produced))
            }
            return output
        }
    }
}
