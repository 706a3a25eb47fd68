#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The buffer a stream's blocks live in, on both sides of an lz4 stream: each block is written
/// (or decoded) right after the one before, and when the next one does not fit, the last window
/// (``LZ4Limits/windowSize``) moves to the start of the buffer, a larger one if the block needs
/// it, so a block can always refer back that far.
struct LZ4History {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    /// Where the next block goes.
    var position = 0

    init() {
        self.capacity = LZ4Limits.windowSize * 2
        self.base = .allocate(byteCount: self.capacity, alignment: LZ4Limits.bufferAlignment)
    }

    func deallocate() { self.base.deallocate() }

    /// Where the next block goes.
    var next: UnsafeMutableRawPointer { self.base + self.position }

    /// Makes sure `count` more bytes fit contiguously after the history. When they do not,
    /// `keepWindow` moves the last window from `old`, whose history ends at `end`, to
    /// `destination` (the start of this buffer, or of a larger one: the two may overlap) and
    /// returns how many bytes it kept.
    mutating func makeRoom(
        for count: Int,
        keepWindow: (_ destination: UnsafeMutableRawPointer, _ old: UnsafeMutableRawPointer, _ end: Int) -> Int
    ) {
        guard self.position + count > self.capacity else { return }
        let needed = LZ4Limits.windowSize + count
        guard needed > self.capacity else {
            self.position = keepWindow(self.base, self.base, self.position)
            return
        }
        let capacity = max(needed, self.capacity * 2)
        let larger = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: LZ4Limits.bufferAlignment)
        let kept = keepWindow(larger, self.base, self.position)
        self.base.deallocate()
        self.base = larger
        self.capacity = capacity
        self.position = kept
    }
}
