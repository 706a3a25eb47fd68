import Logging

extension Tenant {
    /// Compacts the tenant's state into a checkpoint of its own log and drops the log segments it
    /// covers. Writes go on meanwhile, into a new segment. A tenant of a shared log does nothing
    /// here: its store checkpoints the whole log.
    /// - Throws: when the checkpoint cannot be written; the log still holds everything then.
    public func checkpoint() async throws {
        guard let log = self.journal.ownLog, !self.checkpoints.running else { return }
        self.checkpoints.running = true
        defer { self.endRun() }
        guard let (snapshot, cut) = self.captureForCheckpoint(floor: 0), cut > self.checkpoints.lastCheckpointLSN
        else { return }
        // In the same actor turn: appends after the capture go to a new segment.
        assert(cut <= log.lastAppendedLSN, "checkpoint cut \(cut) past the log's end \(log.lastAppendedLSN)")
        log.rollForCheckpoint()
        let storage = try await CheckpointMetrics.measure { try await log.writeCheckpoint(snapshot, lsn: cut) }
        self.checkpoints.written(cut: cut, size: storage)
        self.quota.storageBytes = storage
        self.publishGauges()
        self.logger.debug("checkpoint written", metadata: ["lsn": "\(cut)"])
    }

    /// The tenant's state for a checkpoint, captured in one actor turn: every record it appended,
    /// durable or not, with its cut, its newest lsn or `floor` if that is higher. The state holds
    /// every record of the tenant up to the cut and none after it: a record appended later gets an
    /// lsn above both (`floor` is a lsn the log had reached before this call). The caller writes
    /// the checkpoint only once the log is durable up to the cut.
    /// - Returns: nil when the tenant does not serve (failed, being deleted, closed).
    func captureForCheckpoint(floor: UInt64) -> (TenantState, UInt64)? {
        guard case .serving = self.lifecycle else { return nil }
        self.checkpoints.bytesAtCapture = self.checkpoints.bytesSinceCheckpoint
        return (self.checkpointImage, max(self.checkpoints.lastOwnLSN, floor))
    }

    /// A shared log's checkpoint holds this tenant's state at `cut`, in `storageBytes` of it.
    func checkpointed(storageBytes: Int64, cut: UInt64) {
        self.checkpoints.written(cut: cut, size: storageBytes)
        self.quota.storageBytes = storageBytes + self.checkpoints.bytesSinceCheckpoint
        self.publishGauges()
    }

    /// A checkpoint, or a snapshot's copy, ended: whoever waits for it goes on.
    func endRun() {
        self.checkpoints.running = false
        let waiting = self.checkpointWaiters
        self.checkpointWaiters = []
        for waiter in waiting { waiter.resume() }
    }

    /// Waits until no checkpoint runs: closing the log under one would leave its files half
    /// rewritten for whoever copies the directory next (a move, a snapshot).
    func waitForCheckpoint() async {
        while self.checkpoints.running {
            await withCheckedContinuation { self.checkpointWaiters.append($0) }
        }
    }

    func checkpointInBackground() async {
        do {
            try await self.checkpoint()
        } catch {
            self.logger.error("checkpoint failed (the log still holds everything): \(error)")
        }
    }
}
