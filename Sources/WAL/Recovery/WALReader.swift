import LZ4
import Logging

/// What a torn-tail repair did to the last segment.
public struct WALTornTail: Sendable, Hashable, CustomStringConvertible {
    /// The damaged segment.
    public var file: String
    /// Where the valid prefix ends and the damage starts.
    public var offset: Int
    /// How many bytes were moved aside.
    public var droppedBytes: Int
    /// Where the damaged bytes were copied to (nil when only checked, not repaired).
    public var movedTo: String?
    /// Why the tail counts as torn.
    public var reason: String

    public var description: String {
        "torn tail in \(file) at offset \(offset): \(droppedBytes) bytes (\(reason))"
            + (movedTo.map { ", moved to \($0)" } ?? "")
    }
}

/// One record as replay hands it over; `payload` is valid only during the call.
public struct WALRecordView {
    /// The record's lsn.
    public var lsn: UInt64
    /// The record's type byte.
    public var type: UInt8
    /// The uncompressed payload.
    public var payload: UnsafeRawBufferPointer
    /// The record's size on disk, header included.
    public var storedSize: Int
}

/// The result of reading a log.
public struct WALRecoveryResult: Sendable {
    /// The lsn of the last valid record, or `startLSN - 1` when there is none.
    public var lastLSN: UInt64
    /// How many records were replayed.
    public var recordCount: Int
    /// How many uncompressed payload bytes were replayed.
    public var payloadBytes: Int
    /// The segments read, oldest first.
    public var segments: [String]
    /// The torn tail found (and, when repairing, cut off), if any.
    public var tornTail: WALTornTail?
}

/// Reads a log directory from its oldest segment to its newest, checking every record.
///
/// A torn tail (the end of the file inside a record, zeroed bytes to the end, or a bad CRC in the
/// record that ends the last segment) is the trace of an interrupted append: the valid prefix is
/// kept and, with `repair`, the damaged bytes are copied aside, the segment truncated and fsynced.
/// Any other damage is corruption, reported with its file and offset, and nothing is changed.
public struct WALReader {
    /// The log's directory.
    public var directory: String
    /// The bound every record's declared size is checked against before anything is allocated.
    public var maxRecordSize: Int
    /// The file layer every read and repair goes through.
    public var fileSystem: any WALFileSystem

    /// Creates a reader.
    public init(
        directory: String,
        maxRecordSize: Int = WALLimits.defaultMaxRecordSize,
        fileSystem: any WALFileSystem = POSIXFileSystem()
    ) {
        self.directory = directory
        self.maxRecordSize = maxRecordSize
        self.fileSystem = fileSystem
    }

    /// The segment files of the directory, oldest first.
    public func segmentNames() throws -> [(name: String, firstLSN: UInt64)] {
        guard self.fileSystem.isDirectory(self.directory) else { return [] }
        return try self.fileSystem.listDirectory(self.directory).compactMap { name in
            WALFormat.firstLSN(ofSegmentNamed: name).map { (name, $0) }
        }.sorted { $0.firstLSN < $1.firstLSN }
    }

    /// Replays every record in lsn order.
    /// - Parameters:
    ///   - repair: cut a torn tail off (true, as recovery does) or only report it (false, as verify does).
    ///   - logger: where repairs are logged.
    ///   - handler: called with each record's lsn, type and uncompressed payload (valid during the call).
    /// - Returns: what was read and repaired.
    /// - Throws: ``WALError`` for corruption or I/O errors, or the handler's errors.
    public func replay(
        repair: Bool,
        logger: Logger? = nil,
        _ handler: (UInt64, UInt8, UnsafeRawBufferPointer) throws -> Void
    ) throws -> WALRecoveryResult {
        try self.replayRecords(repair: repair, logger: logger) { record in
            try handler(record.lsn, record.type, record.payload)
        }
    }

    /// Replays every record in lsn order, with its size on disk. See ``replay(repair:logger:_:)``.
    public func replayRecords(
        repair: Bool,
        after checkpointLSN: UInt64 = 0,
        logger: Logger? = nil,
        _ handler: (WALRecordView) throws -> Void
    ) throws -> WALRecoveryResult {
        guard checkpointLSN <= WALFormat.maxLSN else {
            throw WALError.corrupt(
                file: self.directory,
                offset: 0,
                reason: "checkpoint lsn \(checkpointLSN) out of range"
            )
        }
        let segments = try self.segments(after: checkpointLSN)
        var result = WALRecoveryResult(
            lastLSN: checkpointLSN,
            recordCount: 0,
            payloadBytes: 0,
            segments: segments.map(\.name),
            tornTail: nil
        )
        var expectedLSN: UInt64? = nil
        if segments.isEmpty { result.lastLSN = checkpointLSN }
        let decompressor = LZ4StreamDecompressor(maxBlockSize: self.maxRecordSize)
        for (index, segment) in segments.enumerated() {
            let isLast = index == segments.count - 1
            let path = self.directory + "/" + segment.name
            let bytes = try self.fileSystem.readFile(path)
            try Self.checkStart(of: segment, path: path, expected: expectedLSN, checkpointLSN: checkpointLSN)
            if expectedLSN == nil { result.lastLSN = max(checkpointLSN, segment.firstLSN &- 1) }
            decompressor.reset()
            let (outcome, expected) = try bytes.withUnsafeBytes { file in
                try Self.scanSegment(
                    file,
                    path: path,
                    firstLSN: segment.firstLSN,
                    isLast: isLast,
                    checkpointLSN: checkpointLSN,
                    maxRecordSize: self.maxRecordSize,
                    decompressor: decompressor,
                    result: &result,
                    handler
                )
            }
            expectedLSN = expected
            if case .torn(let offset, let reason) = outcome {
                var torn = WALTornTail(
                    file: path,
                    offset: offset,
                    droppedBytes: bytes.count - offset,
                    movedTo: nil,
                    reason: reason
                )
                if repair {
                    torn.movedTo = try Self.cutTail(path: path, bytes: bytes, at: offset, fileSystem: self.fileSystem)
                    logger?.warning("repaired \(torn)")
                }
                result.tornTail = torn
            }
        }
        return result
    }

    /// The segments recovery reads: those wholly covered by the checkpoint at `checkpointLSN` are
    /// skipped (a crash may have left them), and the first must start where the checkpoint ends.
    private func segments(after checkpointLSN: UInt64) throws -> [(name: String, firstLSN: UInt64)] {
        var segments = try self.segmentNames()
        guard checkpointLSN > 0 else { return segments }
        while segments.count > 1 && segments[1].firstLSN <= checkpointLSN + 1 { segments.removeFirst() }
        if let first = segments.first, first.firstLSN > checkpointLSN + 1 {
            throw WALError.corrupt(
                file: self.directory + "/" + first.name,
                offset: 0,
                reason: "segments after the checkpoint at lsn \(checkpointLSN) start at \(first.firstLSN)"
            )
        }
        return segments
    }

    /// A segment must start where the one before ended (`expected`), and the first one at lsn 1
    /// unless a checkpoint covers what came before.
    private static func checkStart(
        of segment: (name: String, firstLSN: UInt64),
        path: String,
        expected: UInt64?,
        checkpointLSN: UInt64
    ) throws {
        if let expected, segment.firstLSN != expected {
            throw WALError.corrupt(
                file: path,
                offset: 0,
                reason: "segment starts at lsn \(segment.firstLSN), \(expected) expected (a segment is missing)"
            )
        }
        if expected == nil && checkpointLSN == 0 && segment.firstLSN != 1 {
            throw WALError.corrupt(
                file: path,
                offset: 0,
                reason: "the log starts at lsn \(segment.firstLSN) and no checkpoint covers what came before"
            )
        }
    }

    /// Reads one segment's bytes as recovery does, without touching the disk (for the fuzzers).
    /// - Parameters:
    ///   - bytes: the segment file's bytes.
    ///   - firstLSN: the lsn its name stands for.
    ///   - isLast: whether it is the newest segment (whose damaged tail counts as torn).
    ///   - maxRecordSize: the bound on one record.
    ///   - handler: called with each record.
    /// - Returns: what was read; `tornTail` when the segment ends in a torn tail.
    /// - Throws: ``WALError`` for corruption, or the handler's errors.
    @_spi(Fuzzing)
    public static func readSegment(
        _ bytes: [UInt8],
        firstLSN: UInt64,
        isLast: Bool,
        maxRecordSize: Int = WALLimits.defaultMaxRecordSize,
        _ handler: (WALRecordView) throws -> Void
    ) throws -> WALRecoveryResult {
        let path = WALFormat.segmentName(firstLSN: firstLSN)
        var result = WALRecoveryResult(lastLSN: 0, recordCount: 0, payloadBytes: 0, segments: [path], tornTail: nil)
        let decompressor = LZ4StreamDecompressor(maxBlockSize: maxRecordSize)
        let (outcome, _) = try bytes.withUnsafeBytes { file in
            try Self.scanSegment(
                file,
                path: path,
                firstLSN: firstLSN,
                isLast: isLast,
                checkpointLSN: 0,
                maxRecordSize: maxRecordSize,
                decompressor: decompressor,
                result: &result,
                handler
            )
        }
        if case .torn(let offset, let reason) = outcome {
            result.tornTail = WALTornTail(
                file: path,
                offset: offset,
                droppedBytes: bytes.count - offset,
                movedTo: nil,
                reason: reason
            )
        }
        return result
    }

    /// Checks and decodes the records of one segment's bytes, adding them to `result`.
    /// - Returns: whether the segment ends clean or torn, and the lsn its successor must start at.
    private static func scanSegment(
        _ file: UnsafeRawBufferPointer,
        path: String,
        firstLSN: UInt64,
        isLast: Bool,
        checkpointLSN: UInt64,
        maxRecordSize: Int,
        decompressor: LZ4StreamDecompressor,
        result: inout WALRecoveryResult,
        _ handler: (WALRecordView) throws -> Void
    ) throws -> (SegmentOutcome, UInt64) {
        var expected = firstLSN
        if let torn = try Self.checkHeader(file, path: path, firstLSN: firstLSN, isLast: isLast) {
            return (torn, expected)
        }
        let maxStored = WALFormat.maxStoredSize(forRecordSize: maxRecordSize)
        var offset = WALFormat.segmentHeaderSize
        while offset < file.count {
            let header: RecordHeader
            switch try Self.checkRecord(
                file,
                at: offset,
                path: path,
                isLast: isLast,
                maxStored: maxStored,
                maxRecordSize: maxRecordSize
            ) {
            case .torn(let reason): return (.torn(offset: offset, reason: reason), expected)
            case .record(let checked): header = checked
            }
            let lsn = header.lsn
            guard lsn == expected else {
                throw WALError.corrupt(file: path, offset: offset, reason: "lsn \(lsn), \(expected) expected")
            }
            // The writer appends after the last lsn read: it must have a successor.
            guard lsn < WALFormat.maxLSN else {
                throw WALError.corrupt(file: path, offset: offset, reason: "lsn \(lsn) out of range")
            }
            let stored = UnsafeRawBufferPointer(rebasing: file[(offset + WALFormat.recordHeaderSize)..<header.end])
            let payload: UnsafeRawBufferPointer
            do {
                payload = try decompressor.decompress(stored, decodedSize: header.decodedSize)
            } catch let error as LZ4Error {
                throw WALError.corrupt(file: path, offset: offset, reason: error.description)
            }
            // Records the checkpoint holds are checked and decoded (the stream needs them)
            // but not handed over.
            if lsn > checkpointLSN {
                try handler(
                    WALRecordView(lsn: lsn, type: header.type, payload: payload, storedSize: header.end - offset)
                )
            }
            result.recordCount += 1
            result.payloadBytes += header.decodedSize
            result.lastLSN = max(lsn, checkpointLSN)
            expected = lsn + 1
            offset = header.end
        }
        return (.clean, expected)
    }

    /// A segment's header: nil when it is whole and names `firstLSN`; a torn outcome when the
    /// newest segment's header was never finished.
    private static func checkHeader(
        _ file: UnsafeRawBufferPointer,
        path: String,
        firstLSN: UInt64,
        isLast: Bool
    ) throws -> SegmentOutcome? {
        guard let headerLSN = WALFormat.parseSegmentHeader(file) else {
            if isLast && (file.count < WALFormat.segmentHeaderSize || file.allSatisfy({ $0 == 0 })) {
                return .torn(offset: 0, reason: "incomplete segment header")
            }
            throw WALError.corrupt(file: path, offset: 0, reason: "bad segment header")
        }
        guard headerLSN == firstLSN else {
            throw WALError.corrupt(file: path, offset: 0, reason: "header lsn \(headerLSN) does not match name")
        }
        guard firstLSN <= WALFormat.maxLSN else {
            throw WALError.corrupt(file: path, offset: 0, reason: "lsn \(firstLSN) out of range")
        }
        return nil
    }

    /// What a record's header says, once its bounds and checksum are checked.
    private struct RecordHeader {
        var type: UInt8
        var lsn: UInt64
        var decodedSize: Int
        /// The offset just past the record.
        var end: Int
    }

    private enum RecordCheck {
        case record(RecordHeader)
        /// The newest segment ends in an interrupted append here.
        case torn(String)
    }

    /// Checks the record at `offset`: its header whole, its sizes in bounds, its bytes in the
    /// file, its checksum right. Damage at the newest segment's end is a torn tail; anywhere
    /// else it is corruption.
    private static func checkRecord(
        _ file: UnsafeRawBufferPointer,
        at offset: Int,
        path: String,
        isLast: Bool,
        maxStored: Int,
        maxRecordSize: Int
    ) throws -> RecordCheck {
        // Only on a failure path: scanning the tail for zeros costs O(tail).
        guard file.count - offset >= WALFormat.recordHeaderSize else {
            if isLast { return .torn(Self.zeroedTail(file, from: offset) ?? "end of file inside a header") }
            throw WALError.corrupt(file: path, offset: offset, reason: "truncated record header")
        }
        let storedCRC = file.loadLE(UInt32.self, at: offset)
        let length = Int(file.loadLE(UInt32.self, at: offset + 4))
        let header = RecordHeader(
            type: file[offset + 8],
            lsn: file.loadLE(UInt64.self, at: offset + 9),
            decodedSize: Int(file.loadLE(UInt32.self, at: offset + 17)),
            end: offset + WALFormat.recordHeaderSize + length
        )
        guard length <= maxStored, header.decodedSize <= maxRecordSize else {
            if isLast, let reason = Self.zeroedTail(file, from: offset) { return .torn(reason) }
            throw WALError.corrupt(file: path, offset: offset, reason: "declared size out of bounds")
        }
        guard header.end <= file.count else {
            if isLast { return .torn("end of file inside a record") }
            throw WALError.corrupt(file: path, offset: offset, reason: "record runs past end of file")
        }
        let covered = UnsafeRawBufferPointer(rebasing: file[(offset + 4)..<header.end])
        guard CRC32C.unmask(storedCRC) == CRC32C.checksum(covered) else {
            if isLast, header.end == file.count || Self.zeroedTail(file, from: offset) != nil {
                return .torn(Self.zeroedTail(file, from: offset) ?? "bad checksum in the last record")
            }
            throw WALError.corrupt(file: path, offset: offset, reason: "checksum mismatch")
        }
        return .record(header)
    }

    private enum SegmentOutcome {
        case clean
        case torn(offset: Int, reason: String)
    }

    /// Why the bytes from `offset` to the end look like an interrupted append, or nil.
    private static func zeroedTail(_ file: UnsafeRawBufferPointer, from offset: Int) -> String? {
        let tail = UnsafeRawBufferPointer(rebasing: file[offset...])
        if tail.allSatisfy({ $0 == 0 }) { return "zeroed bytes to the end of the file" }
        return nil
    }

    /// Copies `bytes[offset...]` aside, truncates the segment to `offset`, fsyncs both and the directory.
    private static func cutTail(
        path: String,
        bytes: [UInt8],
        at offset: Int,
        fileSystem: any WALFileSystem
    ) throws -> String {
        let aside = path + ".torn-\(offset)"
        try fileSystem.writeFileAtomically(aside, contents: Array(bytes[offset...]))
        if offset == 0 {
            try fileSystem.remove(path)
        } else {
            try fileSystem.truncate(path, to: offset)
        }
        try fileSystem.syncDirectory(POSIXFile.parent(of: path))
        return aside
    }
}
