import NIOCore
import Synchronization
import TenantEngine
import WAL

/// The end of an event loop's turn, where the POSTs its connections ran synchronously are
/// written and answered, and every connection's lane replies are written, as Redis writes its
/// AOF in `beforeSleep` and only then its clients' replies.
///
/// The first record a turn appends to a tenant's log schedules the end of the turn (a task on the
/// loop, which NIO runs after the reads of this turn): every dirty log is written with one
/// write(2) (`everysec` and `no`), its durable messages become visible, and each connection that
/// waits on it writes its replies. When the log cannot be written on the loop without blocking
/// (`always`, whose fdatasync runs off the loop; a new segment; another flush under way), the
/// log's queue writes it, with one group commit for every connection of every loop, and the
/// loop finishes the turn when it calls back.
///
/// `@unchecked Sendable`: every property is touched only on `loop` (checked with assertions).
final class LoopTurn: @unchecked Sendable {
    /// A connection waiting on a tenant's log.
    protocol Waiter: AnyObject {
        /// The tenant's log is written up to `upTo` (or failed there with `error`): answer what
        /// can be answered.
        func logWritten(_ tenant: Tenant, upTo: UInt64, error: TenantError?)
        /// The turn ended: write what waits (replies of commands that wrote nothing).
        func turnEnded()
        /// The turn the waiter was last registered in.
        var turnMark: UInt64 { get set }
        /// The turn the waiter last asked to be flushed in.
        var flushMark: UInt64 { get set }
    }

    let loop: any EventLoop
    private var scheduled = false
    private var number: UInt64 = 1
    private var dirty: [ObjectIdentifier: (tenant: Tenant, waiters: [any Waiter])] = [:]
    private var flushes: [any Waiter] = []

    private init(loop: any EventLoop) {
        self.loop = loop
    }

    private static let turns = Mutex<[ObjectIdentifier: LoopTurn]>([:])

    /// The turn of `loop` (one per loop, for the process's life).
    static func of(_ loop: any EventLoop) -> LoopTurn {
        self.turns.withLock { turns in
            if let turn = turns[ObjectIdentifier(loop)] { return turn }
            let turn = LoopTurn(loop: loop)
            turns[ObjectIdentifier(loop)] = turn
            return turn
        }
    }

    /// `waiter` appended to `tenant`'s log in this turn: at the end of the turn it is told.
    func appended(to tenant: Tenant, by waiter: any Waiter) {
        self.loop.assertInEventLoop()
        let key = ObjectIdentifier(tenant)
        if waiter.turnMark != self.number || self.dirty[key] == nil {
            waiter.turnMark = self.number
            if self.dirty[key] == nil {
                self.dirty[key] = (tenant, [waiter])
            } else {
                self.dirty[key]!.waiters.append(waiter)
            }
        }
        self.schedule()
    }

    /// `waiter` has replies to write: at the end of the turn, with every other connection's, so
    /// that a client with many connections is woken once for many replies (as Redis writes its
    /// clients' replies in `beforeSleep`).
    func flushAtEnd(_ waiter: any Waiter) {
        self.loop.assertInEventLoop()
        guard waiter.flushMark != self.number else { return }
        waiter.flushMark = self.number
        self.flushes.append(waiter)
        self.schedule()
    }

    private func schedule() {
        guard !self.scheduled else { return }
        self.scheduled = true
        self.loop.execute { self.end() }
    }

    /// Writes every dirty log and answers its waiters.
    private func end() {
        self.loop.assertInEventLoop()
        self.scheduled = false
        self.number &+= 1
        let work = self.dirty
        self.dirty.removeAll(keepingCapacity: true)
        let flushes = self.flushes
        self.flushes.removeAll(keepingCapacity: true)
        defer {
            // After the logs: replies behind a POST this turn wrote go out with it.
            for waiter in flushes { waiter.turnEnded() }
        }
        for (_, entry) in work {
            let tenant = entry.tenant
            if tenant.writeTurnOnLoop() {
                for waiter in entry.waiters { waiter.logWritten(tenant, upTo: .max, error: nil) }
                continue
            }
            let upTo = tenant.lastAppendedLSN
            let loop = self.loop
            let waiters = NIOLoopBound(entry.waiters, eventLoop: loop)
            tenant.whenDurable(upTo) { error in
                loop.execute {
                    let failure = tenant.settleOnLoop(error)
                    for waiter in waiters.value { waiter.logWritten(tenant, upTo: upTo, error: failure) }
                }
            }
        }
    }
}
