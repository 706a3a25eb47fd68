import Logging
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A tenant directory on disk: its newest valid checkpoint, then the log after it.
enum TenantStorage {
    struct Recovered {
        var state: TenantState
        var result: WALRecoveryResult
        var checkpointLSN: UInt64
    }

    /// Rebuilds a tenant's state from its directory.
    /// - Parameters:
    ///   - path: the tenant directory.
    ///   - maxRecordSize: the bound on one record.
    ///   - repair: cut a torn tail off and remove unfinished checkpoint files (recovery), or change
    ///     nothing (verify).
    ///   - logger: where repairs and skipped checkpoints are reported.
    /// - Throws: ``WALError`` for corruption, ``TenantError`` for a record that does not decode.
    static func recover(path: String, maxRecordSize: Int, repair: Bool, logger: Logger?) throws -> Recovered {
        var state = TenantState()
        var checkpointLSN: UInt64 = 0
        let directory = path + "/checkpoint"
        if POSIXFile.isDirectory(directory) {
            let names = try POSIXFile.listDirectory(directory)
            if repair {
                // A checkpoint still under its temporary name was never complete: never trusted.
                for name in names where name.hasSuffix(".tmp") { try POSIXFile.remove(directory + "/" + name) }
            }
            let checkpoints = names.compactMap { name in Checkpoint.lsn(ofFileNamed: name).map { (name, $0) } }
                .sorted { $0.1 > $1.1 }
            var firstProblem: (any Error)?
            for (name, lsn) in checkpoints {
                do {
                    let (loaded, loadedLSN) = try Checkpoint.decode(path: directory + "/" + name)
                    guard loadedLSN == lsn, loaded.metadata != nil else {
                        throw WALError.corrupt(
                            file: directory + "/" + name,
                            offset: 0,
                            reason: "lsn or metadata missing"
                        )
                    }
                    state = loaded
                    checkpointLSN = lsn
                    break
                } catch {
                    // An older checkpoint and the segments after it may still recover the tenant;
                    // if they do not, the log reader reports the gap as corruption.
                    logger?.error("checkpoint \(directory)/\(name) is not usable: \(error)")
                    if firstProblem == nil { firstProblem = error }
                }
            }
            if checkpointLSN == 0, let firstProblem {
                // No usable checkpoint: only a log that still starts at lsn 1 can stand in for it.
                let segments = try WALReader(directory: path + "/wal").segmentNames()
                if segments.first?.firstLSN != 1 { throw firstProblem }
            }
        }
        let reader = WALReader(directory: path + "/wal", maxRecordSize: maxRecordSize)
        let result = try reader.replayRecords(repair: repair, after: checkpointLSN, logger: logger) { record in
            do {
                try state.apply(TenantRecord.decode(type: record.type, payload: record.payload))
            } catch {
                throw TenantError(.ioError, "tenant log record \(record.lsn) in \(path) does not decode: \(error)")
            }
        }
        return Recovered(state: state, result: result, checkpointLSN: checkpointLSN)
    }

    /// Writes a checkpoint of `state` at `lsn` durably, then drops the segments and older
    /// checkpoints it covers. Every step leaves a directory that recovers whole: the checkpoint is
    /// complete under its final name (temp name, fsync, rename, directory fsync) before anything
    /// is removed.
    static func writeCheckpoint(
        _ state: TenantState,
        lsn: UInt64,
        path: String,
        fileSystem: any WALFileSystem = POSIXFileSystem()
    ) throws {
        let directory = path + "/checkpoint"
        if try POSIXFile.makeDirectory(directory) { try fileSystem.syncDirectory(path) }
        let final = directory + "/" + Checkpoint.fileName(lsn: lsn)
        let temporary = final + ".tmp"
        let bytes = try Checkpoint.encode(state, lsn: lsn)
        let fd = try POSIXFile.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC)
        do {
            try bytes.withUnsafeBytes { try fileSystem.write(fd, $0, path: temporary) }
            try fileSystem.sync(fd, path: temporary)
            fileSystem.close(fd, path: temporary)
        } catch {
            fileSystem.close(fd, path: temporary)
            try? POSIXFile.remove(temporary)
            throw error
        }
        do {
            try fileSystem.rename(temporary, to: final)
        } catch {
            try? POSIXFile.remove(temporary)
            throw error
        }
        try fileSystem.syncDirectory(directory)
        let wal = path + "/wal"
        var removedSegment = false
        for segment in try WALReader(directory: wal).segmentNames() where segment.firstLSN <= lsn {
            try POSIXFile.remove(wal + "/" + segment.name)
            removedSegment = true
        }
        if removedSegment { try POSIXFile.fsyncDirectory(wal) }
        var removedCheckpoint = false
        for other in try POSIXFile.listDirectory(directory) {
            if let otherLSN = Checkpoint.lsn(ofFileNamed: other), otherLSN < lsn {
                try POSIXFile.remove(directory + "/" + other)
                removedCheckpoint = true
            }
        }
        if removedCheckpoint { try POSIXFile.fsyncDirectory(directory) }
    }
}
