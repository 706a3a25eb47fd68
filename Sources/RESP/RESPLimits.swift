/// Every numeric limit of the protocol's parser, with its unit and its reason, in one place
/// (issue 22, point 3). The defaults are the contract's (shared/PROTOCOL.md, "Limits"), which
/// are Redis's; a server may tighten them through ``RESPRequestParser/Limits``.
/// `RESPLimitsTests` checks the relations between them.
public enum RESPLimits {
    /// Bytes. The longest bulk string a request may carry.
    public static let maxBulkLength = 1 << 20
    /// Bytes. The longest inline command line (Redis's `PROTO_INLINE_MAX_SIZE`).
    public static let maxInlineLength = 64 << 10
    /// Arguments. The most in one array.
    public static let maxArgumentCount = 1 << 20
    /// Bytes. The most one request's kept arguments take together, ``argumentOverhead`` each
    /// included (Redis's `client-query-buffer-limit`).
    public static let maxRequestBytes = 16 << 20
    /// Arguments. Before authentication, the most of one request (Redis 7's rule).
    public static let unauthenticatedArgumentCount = 10
    /// Bytes. Before authentication, the longest argument (Redis 7's rule).
    public static let unauthenticatedBulkLength = 16 << 10
    /// Bytes. What an argument costs beyond its own bytes against ``maxRequestBytes``: a million
    /// empty arguments count too.
    public static let argumentOverhead = 32
    /// Bytes. Redis's own bound on a declared bulk length (`proto-max-bulk-len`): a longer
    /// declaration is a protocol error, a shorter one past ``maxBulkLength`` is skipped and refused.
    public static let protocolMaxBulk = 512 << 20
    /// Bytes. The longest count line (`*n`, `$n`) before it is a protocol error.
    public static let maxCountLine = 64 << 10
    /// Digits. The most a count may have: a 64-bit integer's 19, and a sign.
    public static let maxCountDigits = 20
    /// Arguments. The largest array of words the parser keeps for the next command to reuse.
    public static let spareCapacity = 64
}
