import CLZ4

/// lz4 streaming (linked-block) compression: every block may refer to the 64 KiB of input before it,
/// so short records compress against their predecessors.
///
/// The input of each block is copied into a history buffer owned by the compressor; when the buffer
/// is full, `LZ4_saveDict` moves the last 64 KiB to its start, as `lz4.h` asks, so the history the
/// encoder refers to never moves under it. A decoder that keeps at least the last 64 KiB of decoded
/// bytes (``LZ4StreamDecompressor``) reads the blocks back in the same order.
///
/// `@unchecked Sendable` so an owner can keep it inside its own lock (WALWriter keeps it in its
/// `Mutex`); it is not thread-safe by itself: one owner at a time.
public final class LZ4StreamCompressor: @unchecked Sendable {

    private let stream: UnsafeMutablePointer<LZ4_stream_t>
    private var history = LZ4History()
    /// The largest block this compressor accepts.
    public let maxBlockSize: Int

    /// Creates a compressor at the start of a new stream.
    /// - Parameter maxBlockSize: the largest input accepted by ``compress(_:appendingTo:)``.
    public init(maxBlockSize: Int) {
        precondition(maxBlockSize > 0 && maxBlockSize <= LZ4Block.maxInputSize, "maxBlockSize out of range")
        self.maxBlockSize = maxBlockSize
        self.stream = LZ4_createStream()
    }

    deinit {
        LZ4_freeStream(self.stream)
        self.history.deallocate()
    }

    /// Starts a new, independent stream: later blocks do not refer to earlier ones.
    public func reset() {
        LZ4_resetStream_fast(self.stream)
        self.history.position = 0
    }

    /// Compresses one block and appends it to `output`.
    /// - Parameters:
    ///   - input: the block's bytes, at most ``maxBlockSize``.
    ///   - output: the buffer the compressed bytes are appended to.
    /// - Returns: the number of compressed bytes appended.
    /// - Throws: ``LZ4Error/inputTooLarge(_:)`` above ``maxBlockSize``.
    /// - Complexity: O(n) in the input's size.
    @discardableResult
    public func compress(_ input: UnsafeRawBufferPointer, appendingTo output: inout [UInt8]) throws -> Int {
        guard input.count <= self.maxBlockSize else { throw LZ4Error.inputTooLarge(input.count) }
        self.makeRoom(for: input.count)
        let source = self.history.next
        if let base = input.baseAddress, input.count > 0 {
            source.copyMemory(from: base, byteCount: input.count)
        }
        let bound = LZ4Block.compressBound(input.count)
        let start = output.count
        output.append(contentsOf: repeatElement(0, count: bound))
        let written = output.withUnsafeMutableBytes { dst in
            LZ4_compress_fast_continue(
                self.stream,
                source.assumingMemoryBound(to: CChar.self),
                (dst.baseAddress! + start).assumingMemoryBound(to: CChar.self),
                Int32(input.count),
                Int32(bound),
                1
            )
        }
        guard written > 0 else {
            output.removeLast(bound)
            throw LZ4Error.compressionFailed
        }
        output.removeLast(bound - Int(written))
        self.history.position += input.count
        return Int(written)
    }

    /// Makes sure `count` more bytes fit contiguously after the history: lz4 saves the last
    /// window where the history says.
    private func makeRoom(for count: Int) {
        self.history.makeRoom(for: count) { destination, _, _ in
            Int(
                LZ4_saveDict(
                    self.stream,
                    destination.assumingMemoryBound(to: CChar.self),
                    Int32(LZ4Limits.windowSize)
                )
            )
        }
    }
}
