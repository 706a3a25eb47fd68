import Synchronization
import WAL

/// What an event loop's turn does with a tenant placed on it: the hot commands run on the loop
/// inside the connection's channel handler (isolated through Tenant+Loop's entry points), and at the end of
/// the turn the loop writes the tenant's log once and answers the POSTs it made durable.
extension Tenant {
    /// True when the tenant runs on `executor` (an event loop): a caller on that loop may enter
    /// it synchronously (Tenant+Loop's entry points, `assumeIsolated`).
    public nonisolated func isPlaced(on executor: any SerialExecutor) -> Bool {
        self.executor.runs(on: executor)
    }

    /// The loop it was placed on, nil for a lane.
    public nonisolated var placement: (any SerialExecutor)? { self.executor.placedOn }

    /// The lsn of the last record the tenant's log took (durable or not).
    public nonisolated var lastAppendedLSN: UInt64 { self.journal.lastAppendedLSN }

    /// Writes what the log took this turn on the calling thread when that cannot block (one
    /// write(2); see `WALWriter.writeOnCaller()`), and makes the messages it made durable visible.
    /// - Returns: true when every record appended is written (or the log failed: the POSTs'
    ///   outcomes tell); false when the caller waits with ``whenDurable(_:_:)``.
    public func writeTurn() -> Bool {
        let done = self.journal.writeOnCaller()
        if let failure = self.journal.failure, case .serving = self.lifecycle { _ = self.fail(failure) }
        self.applyDurable()
        return done
    }

    /// Calls `callback` (on the log's queue) once `lsn` is durable or its write failed.
    public nonisolated func whenDurable(_ lsn: UInt64, _ callback: @escaping @Sendable (WALError?) -> Void) {
        self.journal.whenDurable(lsn, callback)
    }

    /// After ``whenDurable(_:_:)`` called back: the messages made durable become visible.
    /// - Returns: the error the waiting POSTs get when the write failed (a failure turns the
    ///   tenant to IOERR; a shortage leaves it serving, and the log retries).
    public func settle(_ error: WALError?) -> TenantError? {
        guard let error else {
            self.applyDurable()
            return nil
        }
        return self.failedWait(error)
    }

    /// A POST's reply once its record is durable and visible (its seq), or the error it got once
    /// the log failed; nil while it waits.
    public func outcome(of ticket: PostTicket) -> Result<UInt64, TenantError>? {
        if self.appliedLSN.load(ordering: .acquiring) >= ticket.lsn { return .success(ticket.seq) }
        if case .failed(let error) = self.lifecycle { return .failure(error) }
        if let failure = self.journal.failure, self.journal.durableLSN < ticket.lsn {
            // The log failed after the tenant closed (it is not `.failed` then): never written.
            return .failure(
                TenantError(.storageFailed, "write to the tenant's log failed (\(failure.publicDescription))")
            )
        }
        return nil
    }
}
