import CLZ4

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Decodes the blocks written by ``LZ4StreamCompressor``, in order, keeping the last 64 KiB of
/// decoded bytes in place as their dictionary.
///
/// Not thread-safe: one owner at a time.
public final class LZ4StreamDecompressor {
    private let stream: UnsafeMutablePointer<LZ4_streamDecode_t>
    private var history = LZ4History()
    /// The largest decoded block this decompressor accepts.
    public let maxBlockSize: Int

    /// Creates a decompressor at the start of a new stream.
    /// - Parameter maxBlockSize: the bound every declared block size is checked against.
    public init(maxBlockSize: Int) {
        precondition(maxBlockSize > 0 && maxBlockSize <= LZ4Block.maxInputSize, "maxBlockSize out of range")
        self.maxBlockSize = maxBlockSize
        self.stream = LZ4_createStreamDecode()
    }

    deinit {
        LZ4_freeStreamDecode(self.stream)
        self.history.deallocate()
    }

    /// Starts a new stream.
    public func reset() {
        LZ4_setStreamDecode(self.stream, nil, 0)
        self.history.position = 0
    }

    /// Decodes the next block of the stream.
    /// - Parameters:
    ///   - input: the compressed block.
    ///   - decodedSize: its declared decoded size, checked against ``maxBlockSize`` first.
    ///   - body: reads the decoded bytes; the view is valid only during the call.
    /// - Returns: what `body` returns.
    /// - Throws: ``LZ4Error`` for a size out of bounds or a damaged block; `body`'s errors.
    public func decompress<Result>(
        _ input: UnsafeRawBufferPointer,
        decodedSize: Int,
        _ body: (UnsafeRawBufferPointer) throws -> Result
    ) throws -> Result {
        try body(try self.decompress(input, decodedSize: decodedSize))
    }

    /// Decodes the next block of the stream.
    /// - Parameters:
    ///   - input: the compressed block.
    ///   - decodedSize: its declared decoded size, checked against ``maxBlockSize`` first.
    /// - Returns: the decoded bytes, valid until the next call (they live in the history window).
    /// - Throws: ``LZ4Error`` for a size out of bounds or a damaged block.
    /// - Complexity: O(n) in the decoded size.
    public func decompress(_ input: UnsafeRawBufferPointer, decodedSize: Int) throws -> UnsafeRawBufferPointer {
        guard decodedSize >= 0, decodedSize <= self.maxBlockSize else {
            throw LZ4Error.declaredSizeTooLarge(decodedSize)
        }
        self.makeRoom(for: decodedSize)
        let destination = self.history.next
        let produced = LZ4_decompress_safe_continue(
            self.stream,
            input.baseAddress?.assumingMemoryBound(to: CChar.self),
            destination.assumingMemoryBound(to: CChar.self),
            Int32(input.count),
            Int32(decodedSize)
        )
        guard produced >= 0 else { throw LZ4Error.corruptInput }
        guard Int(produced) == decodedSize else {
            throw LZ4Error.sizeMismatch(expected: decodedSize, actual: Int(produced))
        }
        self.history.position += decodedSize
        return UnsafeRawBufferPointer(start: destination, count: decodedSize)
    }

    /// Makes sure `count` more bytes fit contiguously after the history: the last window moves
    /// (memmove: its new place may overlap the old), and lz4 is told where it is.
    private func makeRoom(for count: Int) {
        self.history.makeRoom(for: count) { destination, old, end in
            let kept = min(LZ4Limits.windowSize, end)
            memmove(destination, old + (end - kept), kept)
            LZ4_setStreamDecode(self.stream, destination.assumingMemoryBound(to: CChar.self), Int32(kept))
            return kept
        }
    }
}
