import Synchronization

/// Redis's `maxmemory-clients`: the replies that every connection together holds unsent are
/// bounded; past the bound the connections holding the most are closed first, until the sum is
/// under it again. Each connection is bounded on its own too (its reply window, and
/// `client-output-buffer-limit normal`); this bounds their number times that.
///
/// The hot path pays one atomic add per queued or sent batch; the connections are looked at only
/// when the sum is over the bound.
public final class ClientMemoryGuard: Sendable {
    /// A connection's way to say what it holds and to be closed.
    struct Holder: Sendable {
        var bytes: @Sendable () -> Int
        var close: @Sendable () -> Void
    }

    /// The bound in bytes; 0 = none.
    public let limit: Int
    private let total = Atomic<Int>(0)
    /// Every connection, and what it held when the guard chose to close it (nil: not chosen).
    private let holders = Mutex<[Int64: (holder: Holder, closing: Int?)]>([:])
    /// What the connections being closed held when chosen: theirs to give back, not counted
    /// against the others (so that the hot path looks at no connection while they close).
    private let closingBytes = Atomic<Int>(0)
    /// Connections closed by the guard since the start (INFO, metrics).
    public let evicted = Atomic<Int>(0)

    public init(limit: Int) {
        self.limit = limit
    }

    /// Counts a connection closed for its own limit (`client-output-buffer-limit normal`).
    func countEviction() { self.evicted.wrappingAdd(1, ordering: .relaxed) }

    /// The bytes every connection holds now.
    public var heldBytes: Int { self.total.load(ordering: .relaxed) }

    func register(id: Int64, holder: Holder) {
        self.holders.withLock { $0[id] = (holder, nil) }
    }

    /// Forgets a connection, with the bytes it still held.
    func unregister(id: Int64, holding bytes: Int) {
        if let chosen = self.holders.withLock({ $0.removeValue(forKey: id) })?.closing {
            self.closingBytes.wrappingSubtract(chosen, ordering: .relaxed)
        }
        if bytes != 0 { self.total.wrappingSubtract(bytes, ordering: .relaxed) }
    }

    /// Counts a change of what one connection holds; over the bound, closes the biggest holders.
    func add(_ delta: Int) {
        guard delta != 0 else { return }
        let now = self.total.wrappingAdd(delta, ordering: .relaxed).newValue
        guard self.limit > 0 && delta > 0 && now > self.limit else { return }
        if now - self.closingBytes.load(ordering: .relaxed) > self.limit { self.enforce() }
    }

    /// Closes the connections holding the most until what the others hold is under the bound.
    private func enforce() {
        let victims: [Holder] = self.holders.withLock { holders in
            var sum = self.total.load(ordering: .relaxed)
            guard sum > self.limit else { return [] }
            var open: [(id: Int64, holder: Holder, bytes: Int)] = []
            for (id, entry) in holders {
                let bytes = entry.holder.bytes()
                // What connections being closed still hold goes with them: not another's fault.
                if entry.closing != nil { sum -= bytes } else { open.append((id, entry.holder, bytes)) }
            }
            guard sum > self.limit else { return [] }
            open.sort { $0.bytes > $1.bytes }
            var chosen: [Holder] = []
            for entry in open where sum > self.limit && entry.bytes > 0 {
                chosen.append(entry.holder)
                holders[entry.id]?.closing = entry.bytes
                self.closingBytes.wrappingAdd(entry.bytes, ordering: .relaxed)
                sum -= entry.bytes
            }
            return chosen
        }
        for victim in victims {
            self.evicted.wrappingAdd(1, ordering: .relaxed)
            victim.close()
        }
    }
}
