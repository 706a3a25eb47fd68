import WAL

/// Where one tenant's records go: its own log (the `database` strategy) or its share of the one
/// log every tenant writes (`schema`, `shared`), where each payload starts with the tenant id.
final class TenantLog: Sendable {
    let writer: WALWriter
    /// `u8 length + tenant id` before every payload in a shared log; empty for a tenant's own log.
    private let prefix: [UInt8]

    private init(writer: WALWriter, prefix: [UInt8]) {
        self.writer = writer
        self.prefix = prefix
    }

    /// A tenant's own log.
    static func own(_ writer: WALWriter) -> TenantLog {
        TenantLog(writer: writer, prefix: [])
    }

    /// One tenant's share of a shared log.
    static func shared(_ writer: WALWriter, tenantID: String) -> TenantLog {
        TenantLog(writer: writer, prefix: SharedLogPayload.prefix(for: tenantID))
    }

    /// True for a tenant's own log, which the tenant closes.
    var isOwn: Bool { self.prefix.isEmpty }

    /// Queues a record.
    /// - Returns: its lsn and its size on disk.
    func append(_ record: TenantRecord) throws -> (lsn: UInt64, size: Int) {
        var payload = self.prefix
        payload += record.encode()
        return try payload.withUnsafeBytes { try self.writer.appendRecord(type: record.kind.rawValue, payload: $0) }
    }

    /// Waits until `lsn` is durable under the policy.
    func waitUntilDurable(_ lsn: UInt64) async throws {
        try await self.writer.waitUntilDurable(lsn)
    }

    /// The lsn up to which the log is durable.
    var durableLSN: UInt64 { self.writer.durableLSN }

    /// Closes a tenant's own log; a shared log is the registry's to close.
    func close() async throws {
        if self.isOwn { try await self.writer.close() }
    }
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
