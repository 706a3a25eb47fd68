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

    /// Decodes catalog file bytes (`catalog/tenants.json`) as start-up does.
    /// - Parameter bytes: the file's bytes.
    /// - Returns: how many tenants it lists, or nil when start-up would rebuild it.
    public static func decodeCatalog(_ bytes: [UInt8]) -> Int? {
        Catalog.decode(bytes: bytes)?.entries.count
    }
}
