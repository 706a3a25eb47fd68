import NIOCore

/// Every fixed numeric limit of the server in one place, each with its unit and why it is what
/// it is (issue 22, point 3); the operator's limits, with their defaults, are ``ServerLimits``.
/// `FixedLimitsTests` checks the relations between them.
public enum FixedLimits {
    // MARK: A connection's windows

    /// Replies a connection's task holds before it stops reading the client's requests (one reply
    /// alone always fits): Redis bounds a client's output by bytes only; a count bounds the
    /// bookkeeping too.
    static let replyWindow = 1024
    /// Bytes of encoded replies a connection holds before it stops reading: 4 MiB.
    static let replyWindowBytes = 4 << 20
    /// Replies before authentication: an anonymous client that does not read holds little.
    static let unauthenticatedReplyWindow = 16
    /// Bytes of replies before authentication.
    static let unauthenticatedReplyWindowBytes = 64 << 10
    /// Bytes of parsed requests held before authentication before the connection stops reading
    /// (after it, `client-query-buffer-limit` bounds one request).
    static let unauthenticatedRequestBytes = 64 << 10
    /// Bytes the task's writer encodes before it writes them out.
    static let writeChunk = 1 << 20
    /// Bytes of a batch's replies after which it is queued before the batch ends (the queue's
    /// byte window still bounds what waits).
    static let replyBatchMergeBytes = 16 << 10
    /// Requests a connection runs before it lets the event loop's other work go first.
    static let requestsPerTurn = 64

    // MARK: The lane

    /// Bytes of the lane's replies after which they are written without waiting for the end of
    /// the read.
    static let outboxWriteBytes = 64 << 10
    /// Unparsed bytes up to which the socket stays armed while the lane waits.
    static let readAheadBytes = 16 << 10
    /// Reply bytes after which a remote run stops, so that a client that does not read is sent no
    /// more than this past its window (a HISTORY reply can be megabytes).
    static let remoteRunReplyBytes = 64 << 10
    /// Times one connection moves to its tenant's loop: AUTH as another tenant, or USE, moves it
    /// again a few times; a client that keeps switching between tenants on two loops stays put.
    static let maxConnectionMoves = 8
    /// Nanoseconds a tenant counts as active for the turn shares after the turn it last ran a
    /// request in: 20 ms, a few turns of a busy loop.
    static let turnShareActiveSpan: UInt64 = 20_000_000
    /// Lane requests a tenant may run in a turn while several are active, at least.
    static let minimumTurnShare = 16

    // MARK: AUTH throttling

    /// Failed AUTHs one connection may make before delays start.
    static let authConnectionFreeFailures = 2
    /// Failed AUTHs after which a connection is closed.
    static let authConnectionMaxFailures = 8
    /// Recent failures one address may make before delays start.
    static let authAddressFreeFailures = 10.0
    /// Recent failures of an address past which each failing connection is closed.
    static let authAddressMaxFailures = 100.0
    /// Failures of an address forgotten per second (one every 6 s).
    static let authDecayPerSecond = 1.0 / 6
    /// Addresses tracked at most; past it those with no recent failure are forgotten.
    static let authMaxAddresses = 100_000
    /// Failed AUTHs of one address that wait out their delay at once; the others wait their turn.
    /// Past an address's free failures every failure waits (up to 3 s), so an address gets at
    /// most about this many answers to wrong tokens per delay, however many connections it opens.
    /// A right token is never held: it is answered before any of this.
    static let authFailureSlots = 16

    // MARK: Listeners and peers

    /// Pending connections the system queues before `accept` (Redis's `tcp-backlog`).
    static let listenBacklog: CInt = 511
    /// Connections to the metrics listener open at once; past it a new one is closed at accept.
    public static let maxMetricsConnections = 64
    /// Unsent bytes of a metrics reply past which the next request waits (one reply always goes
    /// out whole).
    static let metricsWriteBufferHighWater = 256 << 10
    /// Bytes one reply of a migration peer may take (a BEGIN's file list is the largest: at most
    /// 100,000 files of a few dozen bytes each).
    static let migrationReplyBytes = 16 << 20
    /// Values one reply of a migration peer may hold (four per file of a BEGIN's list), so that a
    /// peer's reply cannot cost more memory than its bytes would suggest.
    static let migrationReplyValues = 500_000
}
