import Foundation
import WAL

/// What `tenantctl repair` did to one tenant directory.
public struct TenantRepairReport: Sendable {
    /// The tenant directory.
    public var path: String
    /// Each change, in words: what was copied aside, cut or moved.
    public var actions: [String] = []
    /// The lsn the tenant ends at now.
    public var lastLSN: UInt64 = 0
    /// Records kept.
    public var records = 0
}

/// Repairs a damaged tenant directory by keeping the valid prefix of its log.
public enum TenantRepair {
    /// Keeps the valid prefix: the damaged segment is copied aside as `<segment>.broken` and cut at
    /// the damage, every later segment is moved aside as `<segment>.broken`, a torn tail is cut as
    /// recovery does. Nothing is deleted.
    /// - Throws: when the damage is not in the log (a checkpoint with nothing to stand in for it,
    ///   a record that does not decode); nothing is changed then.
    public static func repair(
        path: String,
        maxRecordSize: Int = WALLimits.defaultMaxRecordSize
    )
        throws -> TenantRepairReport
    {
        var report = TenantRepairReport(path: path)
        let files = TenantFiles(path)
        let fileSystem = POSIXFileSystem()
        let wal = files.wal
        for _ in 0..<1000 {
            do {
                let recovered = try DirectoryStore.recover(
                    files: files,
                    fileSystem: fileSystem,
                    maxRecordSize: maxRecordSize,
                    repair: true,
                    logger: nil
                )
                if let torn = recovered.result.tornTail { report.actions.append("cut a torn tail: \(torn)") }
                report.lastLSN = recovered.result.lastLSN
                report.records = recovered.result.recordCount
                if !report.actions.isEmpty {
                    let note =
                        "Repaired by tenantctl on \(ISO8601DateFormatter().string(from: Date())); the tenant now ends at lsn "
                        + "\(report.lastLSN).\n" + report.actions.map { "- \($0)\n" }.joined()
                    let previous = (try? fileSystem.readFile(files.repairNote)) ?? []
                    try fileSystem.writeFileAtomically(files.repairNote, contents: previous + Array(note.utf8))
                }
                return report
            } catch let error as WALError {
                guard let location = error.corruptionLocation, POSIXFile.parent(of: location.file) == wal else {
                    throw error
                }
                try Self.cut(location.file, at: location.offset, wal: wal, fileSystem: fileSystem, report: &report)
            }
        }
        throw WALError.failed("repair did not converge")
    }

    private static func cut(
        _ file: String,
        at offset: Int,
        wal: String,
        fileSystem: any WALFileSystem,
        report: inout TenantRepairReport
    ) throws {
        let segments = try WALReader(directory: wal, fileSystem: fileSystem).segmentNames()
        guard
            let index = segments.firstIndex(where: { TenantFiles(POSIXFile.parent(of: wal)).segment($0.name) == file })
        else {
            throw WALError.corrupt(file: file, offset: offset, reason: "not a segment of \(wal)")
        }
        let bytes = try fileSystem.readFile(file)
        try fileSystem.writeFileAtomically(file + ".broken", contents: bytes)
        if offset <= WALFormat.segmentHeaderSize {
            try fileSystem.remove(file)
            report.actions.append(
                "moved \(file) aside whole (\(bytes.count) bytes) as \(file).broken: damaged at offset \(offset)"
            )
        } else {
            try fileSystem.truncate(file, to: offset)
            report.actions.append(
                "cut \(file) at offset \(offset), dropping \(bytes.count - offset) bytes (a copy is \(file).broken)"
            )
        }
        for later in segments[(index + 1)...] {
            let path = TenantFiles(POSIXFile.parent(of: wal)).segment(later.name)
            let size = try fileSystem.fileSize(path)
            try fileSystem.rename(path, to: path + ".broken")
            report.actions.append("moved the later segment \(path) aside (\(size) bytes) as \(path).broken")
        }
        try fileSystem.syncDirectory(wal)
    }
}
