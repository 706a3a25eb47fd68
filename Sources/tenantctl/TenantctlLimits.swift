import TenantEngine

/// The numbers of tenantctl's offline commands, each with its unit and its reason, in one place
/// (issue 22, point 3). `tenantctl import` reads what `export` wrote, so its bounds follow the
/// server's.
enum TenantctlLimits {
    /// Bytes. The default `--max-message-bytes`: the server's default `TENANT_MAX_MESSAGE_BYTES`.
    static let defaultMaxMessageBytes = 65_536
    /// Bytes. The accepted `--max-message-bytes`: the server's own range.
    static let messageBytes = 1...(16 << 20)
    /// Bytes. The shortest bound on one line read: a tenant line of 256 settings of 4 KiB fits.
    static let minLineBytes = 16 << 20
    /// Bytes a message line may take beyond its text's escaped bytes (six for each `\u00XX`).
    static let lineOverhead = 64 << 10
    /// Bytes. Standard output is written a buffer this size at a time.
    static let outputBuffer = 1 << 16
    /// Bytes. Input is read a piece this size at a time.
    static let readChunk = 1 << 16
    /// Characters of the progress bar.
    static let progressWidth = 30

    /// The longest line `import` reads for messages of `maxMessageBytes`: the longest text with
    /// every byte escaped.
    static func maxLineBytes(maxMessageBytes: Int) -> Int {
        max(Self.minLineBytes, maxMessageBytes * 6 + Self.lineOverhead)
    }
}
