extension Tenant {
    /// Writes a consistent copy of the tenant's files to `destination` while it keeps serving:
    /// a checkpoint first (so the copy is one compact file and the segment after it), then every
    /// file copied and synced off the tenant's executor (its event loop serves other tenants),
    /// with the log's files held still (appends wait in the log's buffer) and no checkpoint
    /// started meanwhile (one asked for is skipped: a later one covers it). Nothing the copy
    /// holds is newer than what was durable when it was taken.
    /// - Parameter destination: the new directory (its parent must exist; it must not).
    /// - Returns: the lsn the snapshot ends at.
    public func snapshot(to destination: String) async throws -> UInt64 {
        try self.checkWritable()
        try await self.checkpoint()
        var lsn = self.checkpoints.lastOwnLSN
        var attempts = 0
        while self.journal.durableLSN < lsn || self.messages.hasPending {
            // Writes arrived meanwhile: let them reach the log, then look again.
            attempts += 1
            guard attempts < 1000 else { throw TenantError(.unavailable, "tenant is too busy to snapshot; retry") }
            try await self.waitDurable(lsn)
            lsn = self.checkpoints.lastOwnLSN
        }
        // A checkpoint started by someone else meanwhile would remove segments under the copy:
        // it ends first. Then, in the same actor turn as the copy is marked running (which keeps
        // close, and so delete, move and reopen, waiting): the tenant still serves.
        await self.waitForCheckpoint()
        try self.checkWritable()
        self.checkpoints.running = true
        defer { self.endRun() }
        do {
            guard let log = self.journal.ownLog else {
                throw TenantError.invalid("TENANT SNAPSHOT is for the database strategy")
            }
            return max(lsn, try await log.copy(to: destination))
        } catch let error as TenantError {
            throw error
        } catch {
            throw TenantError.ioError("snapshot to \(destination) failed: \(error)")
        }
    }
}
