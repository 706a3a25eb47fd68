/// The numeric limits of the lz4 streams, with their units and reasons (issue 22, point 3).
/// `LZ4LimitsTests` checks them against liblz4's own.
public enum LZ4Limits {
    /// Bytes. How far back a block may refer: lz4's largest match distance is 65,535, so the
    /// last 64 KiB of the stream is all a block needs of what came before.
    public static let windowSize = 64 * 1024
    /// Bytes. The alignment of a stream's history buffer.
    public static let bufferAlignment = 16
}
