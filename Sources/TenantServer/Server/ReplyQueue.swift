import DequeModule
import Synchronization

/// The replies of one connection between its reader and its writer, bounded.
///
/// The reader pushes a slot per request and suspends while `limit` slots, or `byteLimit` bytes of
/// encoded replies, wait (one reply alone always fits, however large); the writer takes
/// every waiting slot at once and sends them in one write. A client that pipelines without
/// reading thus stops its own reader, NIO stops reading its socket, and TCP pushes back on it:
/// its memory stays bounded and nobody else pays for it. Taking slots in batches is also what
/// lets a pipelining client get one write(2) for many replies.
final class ReplyQueue<Element: Sendable>: Sendable {
    private struct State: ~Copyable {
        var slots = Deque<Element>()
        var bytes = 0
        var finished = false
        var writerGone = false
        var reader: CheckedContinuation<Bool, Never>?
        var writer: CheckedContinuation<Void, Never>?
    }

    private let limit: Int
    private let byteLimit: Int
    private let state = Mutex(State())

    init(limit: Int, byteLimit: Int) {
        precondition(limit > 0 && byteLimit > 0, "the queue needs room for one reply")
        self.limit = limit
        self.byteLimit = byteLimit
    }

    private func isFull(_ state: borrowing State) -> Bool {
        !state.slots.isEmpty && (state.slots.count >= self.limit || state.bytes >= self.byteLimit)
    }

    /// Queues a slot, waiting while the queue is full. One reader at a time.
    /// - Returns: false once the writer is gone: the reader should stop.
    func push(_ element: Element, weight: Int) async -> Bool {
        let room: Bool? = self.state.withLock { state in
            if state.writerGone { return false }
            guard !self.isFull(state) else { return nil }
            state.slots.append(element)
            state.bytes += weight
            return true
        }
        if let room {
            if room { self.wakeWriter() }
            return room
        }
        let resumed = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let ready: Bool? = self.state.withLock { state in
                if state.writerGone { return false }
                if !self.isFull(state) { return true }
                state.reader = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
        guard resumed else { return false }
        return await self.push(element, weight: weight)
    }

    /// Queues a slot without waiting (pub/sub pushes, from a tenant's executor), up to a hard cap
    /// far above the window.
    /// - Returns: false when the writer is gone or the client is that far behind: the caller drops it.
    func pushNow(_ element: Element, weight: Int) -> Bool {
        let queued = self.state.withLock { state -> Bool in
            guard !state.writerGone, !state.finished, state.slots.count < self.limit * 64,
                state.bytes < self.byteLimit * 16
            else { return false }
            state.slots.append(element)
            state.bytes += weight
            return true
        }
        if queued { self.wakeWriter() }
        return queued
    }

    /// No more slots will come.
    func finish() {
        self.state.withLock { $0.finished = true }
        self.wakeWriter()
    }

    /// Takes every queued slot, waiting for one if none is there.
    /// - Returns: the slots, oldest first; nil once the reader finished and all were taken.
    func popAll() async -> [Element]? {
        while true {
            let taken: (slots: [Element], reader: CheckedContinuation<Bool, Never>?)? = self.state.withLock { state in
                guard !state.slots.isEmpty else { return nil }
                defer {
                    state.slots.removeAll(keepingCapacity: true)
                    state.bytes = 0
                    state.reader = nil
                }
                return (Array(state.slots), state.reader)
            }
            if let taken {
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
