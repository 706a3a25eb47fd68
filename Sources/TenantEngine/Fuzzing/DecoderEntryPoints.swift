/// The decoders of the files a tenant directory and a data directory hold, taking bytes rather
/// than paths, for the fuzzers in `Fuzz/`. Production code reads the files and calls the same
/// decoders.
@_spi(Fuzzing)
public enum DecoderEntryPoints {
    /// Decodes checkpoint file bytes as recovery does.
    /// - Parameter bytes: the bytes of a `.ckpt` file.
    /// - Returns: the checkpoint's lsn and how many messages its state holds.
    /// - Throws: `WALError` when the bytes are not a valid checkpoint.
    public static func decodeCheckpoint(_ bytes: [UInt8]) throws -> (lsn: UInt64, messages: Int) {
        let (state, lsn) = try Checkpoint.decode(bytes: bytes, path: "fuzz.ckpt")
        return (lsn, state.messageCount)
    }

    /// Decodes catalog file bytes (`catalog/tenants.bin`, or the JSON of earlier versions) as start-up does.
    /// - Parameter bytes: the file's bytes.
    /// - Returns: how many tenants it lists, or nil when start-up would rebuild it.
    public static func decodeCatalog(_ bytes: [UInt8]) -> Int? {
        Catalog.decode(bytes: bytes)?.entries.count
    }

    /// Decodes the bytes of a shared log's checkpoint as recovery does.
    /// - Returns: the checkpoint's lsn and how many tenants it holds.
    /// - Throws: `WALError` when the bytes are not a valid shared checkpoint.
    public static func decodeSharedCheckpoint(_ bytes: [UInt8]) throws -> (lsn: UInt64, tenants: Int) {
        let (entries, lsn) = try SharedCheckpoint.decode(bytes: bytes, path: "fuzz.ckpt")
        return (lsn, entries.count)
    }

    /// The bytes of a catalog file listing `tenants` (tools, benchmarks and fuzz seeds).
    public static func encodeCatalog(_ tenants: [TenantMetadata]) throws -> [UInt8] {
        var catalog = Catalog(capacity: tenants.count)
        for metadata in tenants { catalog.insert(metadata) }
        return try catalog.encoded()
    }

    /// Decodes bytes as a replica reads its primary's stream: frame after frame, until the bytes
    /// end or a frame does not decode. Every frame decoded is encoded again and must decode to
    /// itself (a crash here is a codec bug, not bad input).
    /// - Returns: how many frames decoded.
    public static func decodeReplicationStream(_ bytes: [UInt8]) -> Int {
        var frames = 0
        var offset = 0
        while offset < bytes.count {
            let decoded = bytes.withUnsafeBytes { raw in
                try? ReplicationFrame.decode(UnsafeRawBufferPointer(rebasing: raw[offset...]))
            }
            guard let (frame, consumed) = decoded else { break }
            let again = frame.encoded()
            let round = again.withUnsafeBytes { try? ReplicationFrame.decode($0) }
            precondition(round?.frame == frame && round?.consumed == again.count, "a frame does not round-trip")
            frames += 1
            offset += consumed
        }
        return frames
    }

    /// A replication frame around `body`, its length and checksum right (fuzzing gets past them).
    public static func replicationFrame(body: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        ReplicationFrame.frame(body: body, into: &bytes)
        return bytes
    }
}
