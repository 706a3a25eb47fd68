import Logging
import WAL

/// A log with its checkpoints, in a tenant directory or the shared log's directory: recovery (the
/// newest usable checkpoint, then the records after it) and the checkpoint commit with segment
/// retention. Every file operation goes through the file layer.
struct CheckpointedLog {
    /// A checkpoint read back: what it holds, the lsn it covers, its size on disk.
    struct Loaded<Body> {
        var body: Body
        var lsn: UInt64
        var size: Int
    }

    let files: TenantFiles
    let fileSystem: any WALFileSystem

    /// The newest checkpoint that decodes, falling back to older ones.
    /// - Parameters:
    ///   - repair: remove unfinished checkpoints (temporary names), as recovery does; verify does not.
    ///   - decode: the checkpoint's file (read through it piece by piece) and path to its body and
    ///     the lsn it says it covers.
    /// - Returns: nil when there is none (and the log must then start at lsn 1).
    /// - Throws: the first checkpoint's problem when none is usable and the log does not start at
    ///   lsn 1 (nothing else could stand in for it).
    func loadNewestCheckpoint<Body>(
        repair: Bool,
        logger: Logger?,
        decode: (any CheckpointSource, String) throws -> (Body, UInt64)
    ) throws -> Loaded<Body>? {
        let directory = self.files.checkpoints
        guard self.fileSystem.isDirectory(directory) else { return nil }
        let names = try self.fileSystem.listDirectory(directory)
        if repair {
            // A checkpoint still under its temporary name was never complete: never trusted.
            for name in names where name.hasSuffix(".tmp") { try self.fileSystem.remove(self.files.checkpoint(name)) }
        }
        let checkpoints = names.compactMap { name in Checkpoint.lsn(ofFileNamed: name).map { (name, $0) } }
            .sorted { $0.1 > $1.1 }
        var firstProblem: (any Error)?
        for (name, lsn) in checkpoints {
            let path = self.files.checkpoint(name)
            do {
                let file = try CheckpointFile(path: path, fileSystem: self.fileSystem)
                let (body, loadedLSN) = try decode(file, path)
                guard loadedLSN == lsn else {
                    throw WALError.corrupt(file: path, offset: 0, reason: "lsn \(loadedLSN) under the name of \(lsn)")
                }
                return Loaded(body: body, lsn: lsn, size: file.size)
            } catch {
                // An older checkpoint and the segments after it may still recover the log; if
                // they do not, the log reader reports the gap as corruption.
                logger?.error("checkpoint \(path) is not usable: \(error)")
                if firstProblem == nil { firstProblem = error }
            }
        }
        if let firstProblem {
            // No usable checkpoint: only a log that still starts at lsn 1 can stand in for it.
            let segments = try WALReader(directory: self.files.wal, fileSystem: self.fileSystem).segmentNames()
            if segments.first?.firstLSN != 1 { throw firstProblem }
        }
        return nil
    }

    /// Replays the records after `lsn` (cutting a torn tail off with `repair`).
    func replay(
        after lsn: UInt64,
        maxRecordSize: Int,
        repair: Bool,
        logger: Logger?,
        _ handler: (WALRecordView) throws -> Void
    ) throws -> WALRecoveryResult {
        try WALReader(directory: self.files.wal, maxRecordSize: maxRecordSize, fileSystem: self.fileSystem)
            .replayRecords(repair: repair, after: lsn, logger: logger, handler)
    }

    /// Writes a checkpoint covering the log up to `lsn` durably, then drops the segments and older
    /// checkpoints it covers. Every step leaves a directory that recovers whole: the checkpoint is
    /// complete under its final name (temporary name, fdatasync, rename, directory fsync) before
    /// anything is removed, and a segment goes only when every record in it is at or before `lsn`.
    /// - Parameters:
    ///   - lastAppendedLSN: the log's newest lsn now; the writer must have been asked for a new
    ///     segment (``WALWriter/startNewSegment()``) when the checkpoint was captured, so that
    ///     nothing after `lsn` is appended to the segments this removes.
    func commit(checkpoint bytes: [UInt8], lsn: UInt64, lastAppendedLSN: UInt64) throws {
        try self.commit(lsn: lsn, lastAppendedLSN: lastAppendedLSN) { output in try output(bytes) }
    }

    /// ``commit(checkpoint:lsn:lastAppendedLSN:)`` with the file written piece by piece by `write`.
    func commit(
        lsn: UInt64,
        lastAppendedLSN: UInt64,
        write: (_ output: ([UInt8]) throws -> Void) throws -> Void
    ) throws {
        // A checkpoint past the log's end would let the log's records after it be dropped.
        assert(lsn <= lastAppendedLSN, "checkpoint cut \(lsn) past the log's end \(lastAppendedLSN)")
        let fileSystem = self.fileSystem
        let directory = self.files.checkpoints
        if try fileSystem.makeDirectory(directory) { try fileSystem.syncDirectory(self.files.directory) }
        try fileSystem.writeFileAtomically(self.files.checkpoint(Checkpoint.fileName(lsn: lsn)), writer: write)
        let wal = self.files.wal
        let segments = try WALReader(directory: wal, fileSystem: fileSystem).segmentNames()
        var removedSegment = false
        for (index, segment) in segments.enumerated() {
            // Covered when the segment after it starts at or before lsn + 1, or, for the newest,
            // when nothing was appended after lsn.
            let covered =
                index + 1 < segments.count
                ? segments[index + 1].firstLSN <= lsn + 1 : segment.firstLSN <= lsn && lastAppendedLSN <= lsn
            guard covered else { break }
            try fileSystem.remove(self.files.segment(segment.name))
            removedSegment = true
        }
        if removedSegment { try fileSystem.syncDirectory(wal) }
        var removedCheckpoint = false
        for other in try fileSystem.listDirectory(directory) {
            if let otherLSN = Checkpoint.lsn(ofFileNamed: other), otherLSN < lsn {
                try fileSystem.remove(self.files.checkpoint(other))
                removedCheckpoint = true
            }
        }
        if removedCheckpoint { try fileSystem.syncDirectory(directory) }
    }
}
