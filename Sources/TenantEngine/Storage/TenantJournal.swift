import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// Where one tenant's records go, as its storage strategy keeps them: the tenant actor appends,
/// waits for durability and asks for checkpoints through this, and never learns the layout.
protocol TenantJournal: AnyObject, Sendable {
    /// Queues a record.
    /// - Returns: its lsn and its size on disk.
    func append(_ record: TenantRecord) throws -> (lsn: UInt64, size: Int)
    /// Queues a record like ``append(_:)``, encoding it in `scratch`'s storage (the caller's
    /// buffer for every record it appends: no allocation per record).
    func append(_ record: TenantRecord, scratch: inout [UInt8]) throws -> (lsn: UInt64, size: Int)
    /// Waits until `lsn` is durable under the policy.
    func waitUntilDurable(_ lsn: UInt64) async throws
    /// Writes what was appended on the calling thread when that cannot block (see
    /// `WALWriter.writeOnCaller()`). - Returns: false when the caller must wait instead.
    func writeOnCaller() -> Bool
    /// Calls `callback` once `lsn` is durable (nil) or its write failed.
    func whenDurable(_ lsn: UInt64, _ callback: @escaping @Sendable (WALError?) -> Void)
    /// The error that stopped the log, if one did.
    var failure: WALError? { get }
    /// The lsn up to which the log is durable.
    var durableLSN: UInt64 { get }
    /// The newest lsn anyone appended to the log: the cut a checkpoint captured now stands at.
    var lastAppendedLSN: UInt64 { get }
    /// The log as the tenant's own (its own directory: it checkpoints and copies it itself, by
    /// the bytes it appends and when it closes); nil for a log the store checkpoints (a shared
    /// log), which has nothing of the kind to offer.
    var ownLog: (any OwnTenantLog)? { get }
    /// Closes the log when it is the tenant's own.
    func close() async throws
}

/// What a tenant can do with a log that is its own alone (``TenantJournal/ownLog``).
protocol OwnTenantLog: AnyObject, Sendable {
    /// The newest lsn appended to it.
    var lastAppendedLSN: UInt64 { get }
    /// Asks the log to put the next append in a new segment, so that the segments a checkpoint
    /// captured now covers can be dropped (called in the actor turn of the capture).
    func rollForCheckpoint()
    /// Writes a checkpoint of `state`, which holds every record of the tenant up to `lsn`, once
    /// the log is durable that far, and drops what it covers.
    /// - Returns: the bytes the tenant holds on disk afterwards.
    func writeCheckpoint(_ state: TenantState, lsn: UInt64) async throws -> Int64
    /// Copies the tenant's files to `destination` (snapshots), off the caller's executor, with no
    /// write reaching them meanwhile; the caller starts no checkpoint until it returns.
    /// - Returns: the lsn the copy holds the log up to.
    func copy(to destination: String) async throws -> UInt64
}

/// A tenant's own log in its own directory (the `database` strategy).
final class DirectoryJournal: TenantJournal, OwnTenantLog {
    let writer: WALWriter
    let files: TenantFiles
    let fileSystem: any WALFileSystem

    init(writer: WALWriter, files: TenantFiles, fileSystem: any WALFileSystem) {
        self.writer = writer
        self.files = files
        self.fileSystem = fileSystem
    }

    func append(_ record: TenantRecord) throws -> (lsn: UInt64, size: Int) {
        var scratch: [UInt8] = []
        return try self.append(record, scratch: &scratch)
    }

    func append(_ record: TenantRecord, scratch: inout [UInt8]) throws -> (lsn: UInt64, size: Int) {
        record.encode(into: &scratch)
        return try scratch.withUnsafeBytes { try self.writer.appendRecord(type: record.kind.rawValue, payload: $0) }
    }

    func waitUntilDurable(_ lsn: UInt64) async throws {
        try await self.writer.waitUntilDurable(lsn)
    }

    func writeOnCaller() -> Bool { self.writer.writeOnCaller() }
    func whenDurable(_ lsn: UInt64, _ callback: @escaping @Sendable (WALError?) -> Void) {
        self.writer.whenDurable(lsn, callback)
    }
    var failure: WALError? { self.writer.failure }
    var durableLSN: UInt64 { self.writer.durableLSN }
    var lastAppendedLSN: UInt64 { self.writer.lastAppendedLSN }
    var ownLog: (any OwnTenantLog)? { self }

    func rollForCheckpoint() {
        self.writer.startNewSegment()
    }

    func writeCheckpoint(_ state: TenantState, lsn: UInt64) async throws -> Int64 {
        // The state may hold records not yet durable: the checkpoint never runs ahead of the log.
        try await self.writer.waitUntilDurable(lsn)
        let log = CheckpointedLog(files: self.files, fileSystem: self.fileSystem)
        let writer = self.writer
        let fileSystem = self.fileSystem
        let directory = self.files.directory
        return try await runBlocking {
            // Streamed to the file a block at a time: a checkpoint never holds the whole state twice.
            try log.commit(lsn: lsn, lastAppendedLSN: writer.lastAppendedLSN) { output in
                try Checkpoint.write(state, lsn: lsn, to: output)
            }
            return try fileSystem.treeSize(directory)
        }
    }

    func copy(to destination: String) async throws -> UInt64 {
        let writer = self.writer
        let fileSystem = self.fileSystem
        let directory = self.files.directory
        // On a thread of its own: the tenant's executor is an event loop that other tenants'
        // connections share, and a copy of gigabytes would hold them all.
        return try await runBlocking {
            try writer.holdingFiles { lsn in
                do {
                    try fileSystem.copyTree(directory, to: destination)
                    try fileSystem.syncDirectory(POSIXFile.parent(of: destination))
                } catch let error as WALError where error == WALError.io("mkdir", path: destination, errno: EEXIST) {
                    // Another copy made it first (a concurrent snapshot): it is not this one's to remove.
                    throw TenantError(.alreadyExists, "\(destination) exists")
                } catch {
                    try? fileSystem.removeTree(destination)
                    throw error
                }
                return lsn
            }
        }
    }

    func close() async throws {
        try await self.writer.close()
    }
}

/// One tenant's share of the log every tenant writes (the `schema` and `shared` strategies):
/// each payload starts with the tenant id. The store checkpoints the whole log.
final class SharedJournal: TenantJournal {
    let log: SharedLog
    /// `u8 length + tenant id` before every payload.
    private let prefix: [UInt8]

    init(log: SharedLog, tenantID: String) {
        self.log = log
        self.prefix = SharedLogPayload.prefix(for: tenantID)
    }

    func append(_ record: TenantRecord) throws -> (lsn: UInt64, size: Int) {
        try self.log.append(record, prefix: self.prefix)
    }

    func append(_ record: TenantRecord, scratch: inout [UInt8]) throws -> (lsn: UInt64, size: Int) {
        try self.log.append(record, prefix: self.prefix)
    }

    func waitUntilDurable(_ lsn: UInt64) async throws {
        try await self.log.writer.waitUntilDurable(lsn)
    }

    func writeOnCaller() -> Bool { self.log.writer.writeOnCaller() }
    func whenDurable(_ lsn: UInt64, _ callback: @escaping @Sendable (WALError?) -> Void) {
        self.log.writer.whenDurable(lsn, callback)
    }
    var failure: WALError? { self.log.writer.failure }
    var durableLSN: UInt64 { self.log.writer.durableLSN }
    var lastAppendedLSN: UInt64 { self.log.writer.lastAppendedLSN }
    /// The store checkpoints the whole shared log; a tenant's part of it is not copied alone.
    var ownLog: (any OwnTenantLog)? { nil }

    func close() async throws {
        // The shared log is the store's to close.
    }
}

/// The log every tenant shares: its writer, and the bytes appended since its last checkpoint,
/// which start the next one once they reach `TENANT_CHECKPOINT_BYTES` or the size of the last
/// checkpoint, whichever is larger (as Redis rewrites its AOF when it has doubled): rewriting
/// every tenant's state then costs at most as many bytes as the log took since.
final class SharedLog: Sendable {
    let writer: WALWriter
    /// Bytes appended since the last checkpoint, whether one is asked for already, and how many
    /// bytes ask for the next.
    private let sinceCheckpoint: Mutex<(bytes: Int64, asked: Bool, threshold: Int64)>
    private let minimumThreshold: Int64
    private let onThreshold: @Sendable () -> Void

    init(
        writer: WALWriter,
        checkpointBytes: Int64,
        appendedSinceCheckpoint: Int64,
        lastCheckpointSize: Int64,
        onThreshold: @escaping @Sendable () -> Void
    ) {
        self.writer = writer
        self.sinceCheckpoint = Mutex((appendedSinceCheckpoint, false, max(checkpointBytes, lastCheckpointSize)))
        self.minimumThreshold = checkpointBytes
        self.onThreshold = onThreshold
    }

    /// Appends a tenant's record, framed once for every caller: `prefix` (the tenant id) then the
    /// record's own payload.
    func append(_ record: TenantRecord, prefix: [UInt8]) throws -> (lsn: UInt64, size: Int) {
        var payload = prefix
        payload += record.encode()
        let appended = try payload.withUnsafeBytes {
            try self.writer.appendRecord(type: record.kind.rawValue, payload: $0)
        }
        let due = self.sinceCheckpoint.withLock { state in
            state.bytes += Int64(appended.size)
            guard state.bytes >= state.threshold, !state.asked else { return false }
            state.asked = true
            return true
        }
        if due { self.onThreshold() }
        return appended
    }

    /// A checkpoint ended: the `consumed` bytes it covers no longer count (0 when it failed), the
    /// next threshold follows its `size` (nil when it failed), and the next append past the
    /// threshold asks for another.
    func checkpointEnded(consumed: Int64, size: Int64? = nil) {
        self.sinceCheckpoint.withLock { state in
            state.bytes = max(0, state.bytes - consumed)
            state.asked = false
            if let size { state.threshold = max(self.minimumThreshold, size) }
        }
    }

    /// The bytes appended since the last checkpoint.
    var bytesSinceCheckpoint: Int64 { self.sinceCheckpoint.withLock { $0.bytes } }
}

/// The tenant-id prefix of payloads in a shared log.
enum SharedLogPayload {
    static func prefix(for tenantID: String) -> [UInt8] {
        let id = Array(tenantID.utf8)
        precondition(id.count <= 255, "tenant ids are at most 50 bytes")
        return [UInt8(id.count)] + id
    }

    /// Splits a shared-log payload into its tenant id and the record's own payload.
    static func split(_ payload: UnsafeRawBufferPointer) throws -> (String, UnsafeRawBufferPointer) {
        guard let count = payload.first.map(Int.init), payload.count >= 1 + count,
            let id = String(validating: payload[1..<(1 + count)], as: UTF8.self), Names.isValidTenantID(id)
        else { throw RecordDecodingError.invalidValue("shared log record without a valid tenant id") }
        return (id, UnsafeRawBufferPointer(rebasing: payload[(1 + count)...]))
    }
}
