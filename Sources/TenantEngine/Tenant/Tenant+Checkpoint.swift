import Logging

extension Tenant {
    /// Compacts the tenant's state into a checkpoint of its own log and drops the log segments it
    /// covers. Writes go on meanwhile, into a new segment. A tenant of a shared log does nothing
    /// here: its store checkpoints the whole log.
    /// - Throws: when the checkpoint cannot be written; the log still holds everything then.
    public func checkpoint() async throws {
        guard self.journal.checkpointsItself, !self.checkpoints.running else { return }
        self.checkpoints.running = true
        defer { self.checkpoints.running = false }
        guard let (snapshot, cut) = try await self.captureForCheckpoint(), cut > self.checkpoints.lastCheckpointLSN
        else { return }
        let storage = try await self.journal.writeCheckpoint(snapshot, lsn: cut)
        self.checkpoints.written(cut: cut)
        self.quota.storageBytes = storage
        self.logger.debug("checkpoint written", metadata: ["lsn": "\(cut)"])
    }

    /// The tenant's state for a checkpoint, once every record it appended is durable and applied,
    /// with its cut: the log's newest lsn at that moment. The state holds every record of the
    /// tenant up to the cut and none after (this actor appends nothing between the two reads).
    /// - Returns: nil when the tenant no longer serves.
    func captureForCheckpoint() async throws -> (TenantState, UInt64)? {
        var own = self.checkpoints.lastOwnLSN
        while true {
            guard case .serving = self.lifecycle else { return nil }
            try await self.waitDurable(own)
            guard case .serving = self.lifecycle else { return nil }
            if self.checkpoints.lastOwnLSN == own && !self.messages.hasPending { break }
            own = self.checkpoints.lastOwnLSN
        }
        self.checkpoints.bytesAtCapture = self.checkpoints.bytesSinceCheckpoint
        return (self.image, max(own, self.journal.lastAppendedLSN))
    }

    /// A shared log's checkpoint holds this tenant's state at `cut`, in `storageBytes` of it.
    func checkpointed(storageBytes: Int64, cut: UInt64) {
        self.checkpoints.written(cut: cut)
        self.quota.storageBytes = storageBytes + self.checkpoints.bytesSinceCheckpoint
    }

    func checkpointInBackground() async {
        do {
            try await self.checkpoint()
        } catch {
            self.logger.error("checkpoint failed (the log still holds everything): \(error)")
        }
    }
}
