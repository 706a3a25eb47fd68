import Logging
import WAL

extension Tenant {
    /// Compacts the tenant's state into a checkpoint and drops the log segments it covers
    /// (`database` strategy). Writes go on meanwhile, into a new segment.
    /// - Throws: when the checkpoint cannot be written; the log still holds everything then.
    public func checkpoint() async throws {
        guard self.log.isOwn, case .serving = self.state, !self.checkpointRunning else { return }
        self.checkpointRunning = true
        defer { self.checkpointRunning = false }
        // Everything appended is durable and applied: the state is exactly the log up to `lsn`.
        var lsn = self.log.writer.lastAppendedLSN
        while true {
            try await self.waitDurable(lsn)
            guard case .serving = self.state else { return }
            let now = self.log.writer.lastAppendedLSN
            if now == lsn && self.pending.isEmpty { break }
            lsn = now
        }
        guard lsn > self.lastCheckpointLSN else { return }
        let snapshot = self.data
        self.log.writer.startNewSegment()
        let bytesAtStart = self.bytesSinceCheckpoint
        let path = self.path
        let covered = lsn
        let fileSystem = self.configuration.fileSystem
        let storage = try await runBlocking {
            try TenantStorage.writeCheckpoint(snapshot, lsn: covered, path: path, fileSystem: fileSystem)
            return try Self.directorySize(path)
        }
        self.lastCheckpointLSN = lsn
        self.bytesSinceCheckpoint = max(0, self.bytesSinceCheckpoint - bytesAtStart)
        self.storageBytes = storage
        self.logger.debug("checkpoint written", metadata: ["lsn": "\(lsn)"])
    }

    func checkpointInBackground() async {
        do {
            try await self.checkpoint()
        } catch {
            self.logger.error("checkpoint failed (the log still holds everything): \(error)")
        }
    }
}
