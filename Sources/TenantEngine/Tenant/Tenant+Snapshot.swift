import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Tenant {
    /// Writes a consistent copy of the tenant's directory to `destination` while it keeps serving:
    /// a checkpoint first (so the copy is one compact file and the segment after it), then, in one
    /// actor turn with no suspension, every file copied and fsynced. Nothing the copy holds is
    /// newer than what was durable when it was taken. `database` strategy.
    /// - Parameter destination: the new directory (its parent must exist; it must not).
    /// - Returns: the lsn the snapshot ends at.
    public func snapshot(to destination: String) async throws -> UInt64 {
        guard self.log.isOwn else { throw TenantError.invalid("TENANT SNAPSHOT is for the database strategy") }
        try self.checkWritable()
        try await self.checkpoint()
        var lsn = self.log.writer.lastAppendedLSN
        var attempts = 0
        while self.log.writer.durableLSN < lsn {
            // Writes arrived meanwhile: let them reach the log, then look again.
            attempts += 1
            guard attempts < 1000 else { throw TenantError(.loading, "tenant is too busy to snapshot; retry") }
            try await self.waitDurable(lsn)
            lsn = self.log.writer.lastAppendedLSN
        }
        // No suspension from here on: the files hold exactly the log up to `lsn`, and no append
        // can run while this actor copies them.
        do {
            try Self.copyTree(self.path, to: destination)
            try POSIXFile.fsyncDirectory(POSIXFile.parent(of: destination))
        } catch {
            try? Self.removeTree(destination)
            throw TenantError.ioError("snapshot to \(destination) failed: \(error)")
        }
        return lsn
    }

    /// Copies a directory tree, fsyncing every file and directory it creates.
    static func copyTree(_ source: String, to destination: String) throws {
        guard mkdir(destination, 0o700) == 0 else { throw WALError.io("mkdir", path: destination, errno: errno) }
        for name in try POSIXFile.listDirectory(source) where !name.hasSuffix(".tmp") {
            let from = source + "/" + name
            let to = destination + "/" + name
            if POSIXFile.isDirectory(from) {
                try copyTree(from, to: to)
            } else {
                try POSIXFile.writeFileAtomically(to, contents: try POSIXFile.readAll(from))
            }
        }
        try POSIXFile.fsyncDirectory(destination)
    }

    static func removeTree(_ path: String) throws {
        guard POSIXFile.exists(path) else { return }
        if POSIXFile.isDirectory(path) {
            for name in try POSIXFile.listDirectory(path) { try removeTree(path + "/" + name) }
            guard rmdir(path) == 0 else { throw WALError.io("rmdir", path: path, errno: errno) }
        } else {
            try POSIXFile.remove(path)
        }
    }
}
