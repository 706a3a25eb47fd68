extension Tenant {
    /// Writes a consistent copy of the tenant's files to `destination` while it keeps serving:
    /// a checkpoint first (so the copy is one compact file and the segment after it), then, in one
    /// actor turn with no suspension, every file copied and synced. Nothing the copy holds is
    /// newer than what was durable when it was taken.
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
        // No suspension from here on: the files hold exactly the log up to `lsn`, and no append
        // can run while this actor copies them.
        do {
            try self.journal.copy(to: destination)
        } catch let error as TenantError {
            throw error
        } catch {
            throw TenantError.ioError("snapshot to \(destination) failed: \(error)")
        }
        return lsn
    }
}
