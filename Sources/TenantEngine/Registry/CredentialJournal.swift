import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The credential changes made since the catalog file was last written, appended one record at
/// a time (`catalog/credentials.log`), so that a user change is durable in a few dozen bytes
/// instead of a rewrite of every tenant's entry. Start-up replays it over the catalog; once it
/// passes ``compactionBytes`` the registry writes the catalog and starts the journal again.
///
/// Compaction never loses a record: the journal is first renamed to `credentials.old` (new
/// records go to a new `credentials.log`), then the catalog is written from the keys in memory,
/// which hold every renamed record, and only then is `credentials.old` removed. Start-up replays
/// `credentials.old`, then `credentials.log`, in order: a change applied twice, or after a
/// catalog that already holds it, ends where the last change of each key left it.
///
/// Record, integers little-endian: `payload length (4) | masked crc32c of the payload (4) |
/// payload`; the payload is the tenant id (u32 length + UTF-8), flags (u8: 1 a removed key, 2 an
/// added key), the removed key (8) and the added key (8). A torn or damaged record ends the replay.
final class CredentialJournal: Sendable {

    let current: String
    let previous: String
    private let directory: String
    private let state = Mutex<(fd: Int32, bytes: Int)>((-1, 0))

    /// Whether each record is fdatasynced (not under `--fsync no`, where the tenants' logs are not
    /// synced either).
    private let sync: Bool

    init(catalogDirectory: String, sync: Bool = true) {
        self.sync = sync
        self.directory = catalogDirectory
        let layout = DataLayout(root: POSIXFile.parent(of: catalogDirectory))
        self.current = layout.credentialJournal
        self.previous = layout.previousCredentialJournal
    }

    /// The bytes appended to the current journal since it was opened (or found).
    var bytes: Int { self.state.withLock { $0.bytes } }

    /// Whether a journal file is on disk (start-up replayed it: the catalog should be written).
    var hasFiles: Bool { POSIXFile.exists(self.current) || POSIXFile.exists(self.previous) }

    /// Appends one change and makes it durable.
    func append(id: String, change: CredentialChange) throws {
        let record = Self.encode(id: id, change: change)
        try self.state.withLock { state in
            if state.fd < 0 {
                if !POSIXFile.exists(self.directory) {
                    _ = try POSIXFile.makeDirectory(self.directory)
                }
                let existed = POSIXFile.exists(self.current)
                state.fd = try POSIXFile.open(self.current, flags: O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW)
                state.bytes = (try? POSIXFile.fileSize(self.current)) ?? 0
                if !existed { try POSIXFile.fsyncDirectory(self.directory) }
            }
            try record.withUnsafeBytes { try POSIXFile.writeAll(state.fd, $0, path: self.current) }
            if self.sync { try POSIXFile.fdatasync(state.fd, path: self.current) }
            state.bytes += record.count
        }
    }

    /// Starts a compaction: the current journal becomes `credentials.old`, new records go to a new
    /// one. - Returns: false when an earlier compaction's `credentials.old` is still there (it
    ///   is kept; this compaction then only writes the catalog).
    func rotate() throws -> Bool {
        try self.state.withLock { state in
            if POSIXFile.exists(self.previous) { return false }
            if state.fd >= 0 {
                _ = Glibc.close(state.fd)
                state.fd = -1
            }
            state.bytes = 0
            guard POSIXFile.exists(self.current) else { return true }
            try POSIXFile.rename(self.current, to: self.previous)
            try POSIXFile.fsyncDirectory(self.directory)
            return true
        }
    }

    /// Ends a compaction once the catalog file holds every record of `credentials.old`.
    func dropPrevious() throws {
        guard POSIXFile.exists(self.previous) else { return }
        try POSIXFile.remove(self.previous)
        try POSIXFile.fsyncDirectory(self.directory)
    }

    func close() {
        self.state.withLock { state in
            if state.fd >= 0 { _ = Glibc.close(state.fd) }
            state.fd = -1
        }
    }

    /// Replays `credentials.old` then `credentials.log` over `catalog`.
    /// - Returns: the records applied.
    @discardableResult
    func replay(into catalog: inout Catalog) -> Int {
        var applied = 0
        for path in [self.previous, self.current] {
            guard let size = try? POSIXFile.fileSize(path), size <= EngineLimits.credentialMaxReplayBytes,
                let bytes = try? POSIXFile.readAll(path)
            else { continue }
            for (id, change) in Self.decode(bytes) {
                catalog.apply(change, to: id)
                applied += 1
            }
        }
        return applied
    }

    static func encode(id: String, change: CredentialChange) -> [UInt8] {
        var payload = BinaryWriter(capacity: 32 + id.utf8.count)
        payload.write(id)
        payload.write(UInt8((change.removed == nil ? 0 : 1) | (change.added == nil ? 0 : 2)))
        payload.write(change.removed?.value ?? 0)
        payload.write(change.added?.value ?? 0)
        var record = BinaryWriter(capacity: 8 + payload.bytes.count)
        record.write(UInt32(payload.bytes.count))
        record.write(CRC32C.mask(CRC32C.checksum(payload.bytes)))
        record.bytes += payload.bytes
        return record.bytes
    }

    /// The records of a journal file, up to the first that is torn or damaged.
    static func decode(_ bytes: [UInt8]) -> [(String, CredentialChange)] {
        var records: [(String, CredentialChange)] = []
        bytes.withUnsafeBytes { buffer in
            var reader = BinaryReader(buffer)
            while !reader.isAtEnd {
                guard let length = try? reader.read(UInt32.self), let crc = try? reader.read(UInt32.self),
                    length <= 4 + 255 + 17, buffer.count - reader.offset >= Int(length)
                else { return }
                let start = reader.offset
                let payload = UnsafeRawBufferPointer(rebasing: buffer[start..<(start + Int(length))])
                guard CRC32C.unmask(crc) == CRC32C.checksum(payload) else { return }
                var fields = BinaryReader(payload)
                guard let id = try? fields.readString(), Names.isValidTenantID(id),
                    let flags = try? fields.read(UInt8.self), flags <= 3,
                    let removed = try? fields.read(UInt64.self), let added = try? fields.read(UInt64.self),
                    fields.isAtEnd
                else { return }
                records.append(
                    (
                        id,
                        CredentialChange(
                            removed: flags & 1 != 0 ? CredentialKey(value: removed) : nil,
                            added: flags & 2 != 0 ? CredentialKey(value: added) : nil
                        )
                    )
                )
                reader.offset = start + Int(length)
            }
        }
        return records
    }
}
