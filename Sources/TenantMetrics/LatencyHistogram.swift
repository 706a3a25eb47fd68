import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A histogram of durations over fixed buckets that records without a lock or an allocation:
/// one relaxed atomic add to its bucket and one to its sum. Made once per series (a command, the
/// log's writes), read at each scrape.
///
/// swift-prometheus's histogram takes a lock on every record; on the request path of two event
/// loops that is a contended lock per request, which these counters avoid.
public final class LatencyHistogram: Sendable {
    /// The buckets' upper bounds in seconds (Prometheus's `le`), from 10 µs to 10 s; above the
    /// last is the `+Inf` bucket.
    public static let bounds: [Double] = [
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
        0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]
    /// The same in nanoseconds, for recording.
    static let boundNanoseconds: [UInt64] = bounds.map { UInt64(($0 * 1e9).rounded()) }

    private final class Cell: Sendable {
        let value = Atomic<UInt64>(0)
    }

    /// One cell per bound, then the `+Inf` one: counts per bucket (not cumulative).
    private let cells: [Cell]
    private let sumNanoseconds = Atomic<UInt64>(0)

    /// Creates an empty histogram.
    public init() {
        self.cells = (0...Self.bounds.count).map { _ in Cell() }
    }

    /// Records a duration.
    @inlinable
    public func record(nanoseconds: UInt64) {
        self.add(nanoseconds)
    }

    /// Records the time since `start` (from ``now()``).
    @inlinable
    public func record(since start: UInt64) {
        let end = Self.now()
        self.add(end > start ? end - start : 0)
    }

    @usableFromInline
    func add(_ nanoseconds: UInt64) {
        // A binary search over 19 bounds: five comparisons.
        var low = 0
        var high = Self.boundNanoseconds.count
        while low < high {
            let middle = (low + high) / 2
            if nanoseconds <= Self.boundNanoseconds[middle] { high = middle } else { low = middle + 1 }
        }
        self.cells[low].value.wrappingAdd(1, ordering: .relaxed)
        self.sumNanoseconds.wrappingAdd(nanoseconds, ordering: .relaxed)
    }

    /// What a scrape reads: cumulative counts per bound (Prometheus's buckets), the count and the sum.
    public struct Snapshot: Sendable, Equatable {
        /// `cumulative[i]` is the number of durations at most `bounds[i]`.
        public var cumulative: [UInt64]
        public var count: UInt64
        public var sumSeconds: Double
    }

    /// The histogram as it stands (each cell read once; a record in flight may show in the
    /// count before the sum, never the other way round in a way that matters to a rate).
    public func snapshot() -> Snapshot {
        var cumulative: [UInt64] = []
        cumulative.reserveCapacity(Self.bounds.count)
        var running: UInt64 = 0
        for index in 0..<Self.bounds.count {
            running &+= self.cells[index].value.load(ordering: .relaxed)
            cumulative.append(running)
        }
        running &+= self.cells[Self.bounds.count].value.load(ordering: .relaxed)
        return Snapshot(
            cumulative: cumulative,
            count: running,
            sumSeconds: Double(self.sumNanoseconds.load(ordering: .relaxed)) / 1e9
        )
    }

    /// A monotonic clock in nanoseconds, for ``record(since:)``.
    @inlinable
    public static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}
