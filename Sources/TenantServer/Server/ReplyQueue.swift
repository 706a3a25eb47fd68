import DequeModule
import Synchronization

/// The replies of one connection between its reader and its writer, bounded.
///
/// The reader pushes a slot per reply, or one for a batch's replies encoded together (counted as
/// the replies it holds), and suspends while `limit` replies, or `byteLimit` bytes of encoded
/// replies, wait (one reply alone always fits; no reply is unbounded, HISTORY's pages
/// included); the writer takes the waiting slots, up to ``takeBytes`` at once, and sends them in
/// one write, so what is queued is what is unsent, give or take one batch. A client that pipelines without
/// reading thus stops its own reader, NIO stops reading its socket, and TCP pushes back on it:
/// its memory stays bounded and nobody else pays for it. Taking slots in batches is also what
/// lets a pipelining client get one write(2) for many replies.
final class ReplyQueue<Element: Sendable>: Sendable {
    private struct State: ~Copyable {
        /// Each slot with its weight and the replies it holds (a slot may hold a batch's replies).
        var slots = Deque<(element: Element, weight: Int, replies: Int)>()
        var bytes = 0
        /// The bytes the writer took last: held until it comes back for more (its write went to
        /// the channel, whose next write waits until the client has read).
        var inFlight = 0
        /// The reply the reader holds while it waits for room.
        var waiting = 0
        /// Since when the replies have been over the soft limit of `client-output-buffer-limit normal`.
        var normalOverSoftSince: ContinuousClock.Instant?
        var replies = 0
        var finished = false
        var writerGone = false
        var reader: CheckedContinuation<Bool, Never>?
        var writer: CheckedContinuation<Void, Never>?
        /// Since when the pushes have been over the soft limit of ``PubSubLimit``.
        var overSoftLimitSince: ContinuousClock.Instant?
        /// The window: the most replies, and bytes, before the reader waits.
        var slotLimit: Int
        var byteLimit: Int
    }

    private let pubSubLimit: PubSubLimit
    /// `client-output-buffer-limit normal`: past it the reader's push is refused (the connection
    /// closes, as Redis closes such a client); Redis's default, `0 0 0`, is none.
    private let normalLimit: PubSubLimit
    private let onNormalLimit: @Sendable () -> Void
    /// `maxmemory-clients`: told of every change of the bytes queued here.
    private let memory: ClientMemoryGuard?
    private let onReaderWait: @Sendable () -> Void
    private let onReaderResume: @Sendable () -> Void
    /// The most bytes the writer takes at once (one slot always).
    static var takeBytes: Int { 1 << 20 }
    private let state: Mutex<State>

    /// Creates a queue.
    /// - Parameters:
    ///   - onReaderWait: called each time the reader is about to wait for room,
    ///   - onReaderResume: and each time it goes on.
    init(
        limit: Int,
        byteLimit: Int,
        pubSubLimit: PubSubLimit = PubSubLimit(),
        normalLimit: PubSubLimit = .none,
        onNormalLimit: @escaping @Sendable () -> Void = {},
        memory: ClientMemoryGuard? = nil,
        onReaderWait: @escaping @Sendable () -> Void = {},
        onReaderResume: @escaping @Sendable () -> Void = {}
    ) {
        precondition(limit > 0 && byteLimit > 0, "the queue needs room for one reply")
        self.state = Mutex(State(slotLimit: limit, byteLimit: byteLimit))
        self.pubSubLimit = pubSubLimit
        self.normalLimit = normalLimit
        self.onNormalLimit = onNormalLimit
        self.memory = memory
        self.onReaderWait = onReaderWait
        self.onReaderResume = onReaderResume
    }

    private func isFull(_ state: borrowing State) -> Bool {
        !state.slots.isEmpty && (state.replies >= state.slotLimit || state.bytes >= state.byteLimit)
    }

    /// Sets wider bounds (once the client has authenticated).
    func widen(limit: Int, byteLimit: Int) {
        self.state.withLock { state in
            state.slotLimit = limit
            state.byteLimit = byteLimit
        }
    }

    /// Queues a slot, waiting while the queue is full. One reader at a time.
    /// - Parameters:
    ///   - weight: the bytes it holds.
    ///   - replies: the replies it holds, counted against the window's number of replies.
    /// - Returns: false once the writer is gone: the reader should stop.
    func push(_ element: Element, weight: Int, replies: Int = 1) async -> Bool {
        let now = ContinuousClock.now
        var overLimit = false
        let room: Bool? = self.state.withLock { state in
            if state.writerGone { return false }
            guard !self.isFull(state) else { return nil }
            let held = state.bytes + state.inFlight + weight
            let limit = self.normalLimit
            if limit.hardBytes > 0 && held > limit.hardBytes {
                overLimit = true
                return false
            }
            if limit.softBytes > 0 && held > limit.softBytes {
                let since = state.normalOverSoftSince ?? now
                state.normalOverSoftSince = since
                if since.duration(to: now) >= .seconds(limit.softSeconds) {
                    overLimit = true
                    return false
                }
            } else {
                state.normalOverSoftSince = nil
            }
            state.slots.append((element, weight, replies))
            state.bytes += weight
            state.replies += replies
            return true
        }
        if let room {
            if room {
                self.memory?.add(weight)
                self.wakeWriter()
            }
            if overLimit { self.onNormalLimit() }
            return room
        }
        self.onReaderWait()
        // The reply waiting for room is held too: it counts for maxmemory-clients.
        self.state.withLock { $0.waiting = weight }
        self.memory?.add(weight)
        let resumed = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let ready: Bool? = self.state.withLock { state in
                if state.writerGone { return false }
                if !self.isFull(state) { return true }
                state.reader = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
        self.state.withLock { $0.waiting = 0 }
        self.memory?.add(-weight)
        self.onReaderResume()
        guard resumed else { return false }
        return await self.push(element, weight: weight, replies: replies)
    }

    /// Queues a slot without waiting (pub/sub pushes, from a tenant's executor), within
    /// `client-output-buffer-limit-pubsub`: past the hard limit, or past the soft one for its
    /// seconds, the push is refused and the caller disconnects the client, as Redis does.
    /// - Returns: false when the writer is gone or the client is that far behind.
    func pushNow(_ element: Element, weight: Int) -> Bool {
        let now = ContinuousClock.now
        let queued = self.state.withLock { state -> Bool in
            guard !state.writerGone, !state.finished else { return false }
            let bytes = state.bytes + weight
            let limit = self.pubSubLimit
            if limit.hardBytes > 0 && bytes > limit.hardBytes { return false }
            if limit.softBytes > 0 && bytes > limit.softBytes {
                let since = state.overSoftLimitSince ?? now
                state.overSoftLimitSince = since
                if since.duration(to: now) >= .seconds(limit.softSeconds) { return false }
            } else {
                state.overSoftLimitSince = nil
            }
            state.slots.append((element, weight, 1))
            state.bytes = bytes
            state.replies += 1
            return true
        }
        if queued {
            self.memory?.add(weight)
            self.wakeWriter()
        }
        return queued
    }

    /// The bytes queued now, and those the writer is writing.
    var heldBytes: Int { self.state.withLock { $0.bytes + $0.inFlight + $0.waiting } }

    /// No more slots will come.
    func finish() {
        self.state.withLock { $0.finished = true }
        self.wakeWriter()
    }

    /// Takes the queued slots, up to ``takeBytes`` of them (always one), waiting for one if none is there.
    /// - Returns: the slots, oldest first; nil once the reader finished and all were taken.
    func popAll() async -> [Element]? {
        while true {
            let taken: (slots: [Element], reader: CheckedContinuation<Bool, Never>?, freed: Int)? = self.state.withLock
            {
                state in
                // The writer is back: what it took last is written.
                let before = state.bytes + state.inFlight
                state.inFlight = 0
                guard !state.slots.isEmpty else {
                    return before == 0 ? nil : ([], nil, before)
                }
                var taken: [Element] = []
                var bytes = 0
                var replies = 0
                while let first = state.slots.first, taken.isEmpty || bytes < Self.takeBytes {
                    bytes += first.weight
                    replies += first.replies
                    taken.append(state.slots.removeFirst().element)
                }
                state.bytes = max(0, state.bytes - bytes)
                state.replies = max(0, state.replies - replies)
                if state.slots.isEmpty {
                    state.bytes = 0
                    state.replies = 0
                }
                let reader = self.isFull(state) ? nil : state.reader
                if reader != nil { state.reader = nil }
                state.inFlight = bytes
                return (taken, reader, before - state.bytes - state.inFlight)
            }
            if let taken {
                self.memory?.add(-taken.freed)
                if taken.slots.isEmpty { continue }
                taken.reader?.resume(returning: true)
                return taken.slots
            }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = self.state.withLock { state -> Bool in
                    if !state.slots.isEmpty || state.finished { return true }
                    state.writer = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
            let finishedAndEmpty = self.state.withLock { $0.finished && $0.slots.isEmpty }
            if finishedAndEmpty { return nil }
        }
    }

    /// The writer stopped: wake and stop the reader.
    func writerStopped() {
        let reader = self.state.withLock { state -> CheckedContinuation<Bool, Never>? in
            state.writerGone = true
            defer { state.reader = nil }
            return state.reader
        }
        reader?.resume(returning: false)
    }

    private func wakeWriter() {
        let writer = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            defer { state.writer = nil }
            return state.writer
        }
        writer?.resume()
    }
}

/// `client-output-buffer-limit-pubsub`: the unsent bytes a subscriber may have, as Redis counts them.
public struct PubSubLimit: Sendable, Hashable {
    /// Past this many bytes the subscriber is disconnected at once (0 = no limit).
    public var hardBytes: Int
    /// Past this many bytes for ``softSeconds`` the subscriber is disconnected (0 = no limit).
    public var softBytes: Int
    /// How long the soft limit may be exceeded.
    public var softSeconds: Int

    /// No limit (`0 0 0`): Redis's default for normal clients.
    public static let none = PubSubLimit(hardBytes: 0, softBytes: 0, softSeconds: 0)

    /// Creates a limit; the defaults are Redis's for pub/sub clients (`32mb 8mb 60`).
    public init(hardBytes: Int = 32 << 20, softBytes: Int = 8 << 20, softSeconds: Int = 60) {
        self.hardBytes = hardBytes
        self.softBytes = softBytes
        self.softSeconds = softSeconds
    }

    /// Parses Redis's form, `"<hard> <soft> <seconds>"`, with Redis's units (`k` = 1000, `kb` = 1024,
    /// `m`, `mb`, `g`, `gb`).
    /// - Returns: nil for anything else, or a number out of range.
    public init?(parsing text: String) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 3, let hard = Self.bytes(parts[0]), let soft = Self.bytes(parts[1]),
            let seconds = Int(parts[2]), seconds >= 0, seconds <= 1 << 31
        else { return nil }
        self.init(hardBytes: hard, softBytes: soft, softSeconds: seconds)
    }

    /// Redis's `memtoll`: a number with an optional unit, checked against overflow.
    public static func bytes(_ text: Substring) -> Int? {
        let lowered = text.lowercased()
        let units: [(String, Int)] = [
            ("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10), ("g", 1_000_000_000), ("m", 1_000_000),
            ("k", 1000), ("b", 1),
        ]
        var digits = Substring(lowered)
        var multiplier = 1
        for (suffix, value) in units where lowered.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            multiplier = value
            break
        }
        guard let number = Int(digits), number >= 0 else { return nil }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : bytes
    }
}
