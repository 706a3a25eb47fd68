import RESP
import TenantEngine
import TenantServer

/// The ranges tenantd's settings accept, each with its unit and its reason, in one place (issue
/// 22, point 3). A value outside is refused at start with the setting's name and range (the
/// messages in ``Settings`` print these numbers). ``checkRelations()`` asserts how they relate to
/// the engine's and the protocol's own limits; debug builds (the stock-client tests) run it at
/// every start.
enum SettingLimits {
    /// Ports: TCP's, 0 picking a free one.
    static let ports = 0...65535
    /// Event loops. More than a thousand is a mistake, not a machine.
    static let threads = 1...1024
    /// Bytes of a `TENANT_DOMAIN` (DNS's bound on a name).
    static let maxDomainLength = 253
    /// Tenants with metric series of their own; past a million a scrape is no longer a scrape.
    static let metricsTenants = 0...1_000_000
    /// Bytes. `--maxmemory` below this leaves no room for one tenant's working set (0: no limit).
    static let minMaxMemory = 32 << 20
    /// Bytes. `--migrate-staging-limit` below this cannot hold one segment (0: no bound).
    static let minMigrateStaging = 1 << 20
    /// Bytes of one message (`TENANT_MAX_MESSAGE_BYTES`): a message fits one request and one record.
    static let messageBytes = 1...(16 << 20)
    /// Bytes. `TENANT_CHECKPOINT_BYTES` below a page would checkpoint at every few messages.
    static let minCheckpointBytes = 4096
    /// Seconds: ten years, the longest period a setting takes, so that milliseconds never overflow.
    static let maxSeconds = 315_360_000
    /// Connections (`--maxclients`).
    static let maxClients = 1...1_000_000
    /// Requests: `--fair-share` and `--turn-budget` (0: off).
    static let shares = 0...1_000_000
    /// Seconds of `--tcp-keepalive`: the kernel's `TCP_KEEPIDLE` takes at most 32767.
    static let keepaliveSeconds = 0...32767
    /// Bytes of `--proto-max-bulk-len`: at least a kilobyte, at most Redis's own bound.
    static let protoMaxBulk = 1024...RESPLimits.protocolMaxBulk
    /// Bytes of `--client-query-buffer-limit` (Redis's range).
    static let queryBuffer = (1 << 20)...(1 << 30)
    /// Rooms one connection subscribes to (`--max-subscriptions`).
    static let subscriptions = 1...10_000_000
    /// Bytes. `--maxmemory-clients` below this would close clients for one reply (0: no bound).
    static let minMaxMemoryClients = 1 << 20

    /// The relations these ranges must keep with the engine's and the protocol's limits.
    static func checkRelations() {
        // The contract's defaults are inside the ranges the settings accept.
        assert(Self.protoMaxBulk.contains(RESPLimits.maxBulkLength))
        assert(Self.queryBuffer.contains(RESPLimits.maxRequestBytes))
        // The largest message fits a request and a record of the raised record bound.
        assert(Self.messageBytes.upperBound <= RESPLimits.maxRequestBytes)
        assert(Self.ports.contains(7379) && Self.ports.contains(9479))
        assert(Int64(Self.maxSeconds) * 1000 < Int64.max / 2)
    }
}
