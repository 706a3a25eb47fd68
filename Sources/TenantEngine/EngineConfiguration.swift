import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Everything the engine needs to know about where and how it keeps tenants.
public struct EngineConfiguration: Sendable {
    /// The data directory.
    public var dataDirectory: String
    /// When appends reach the disk.
    public var fsync: FsyncPolicy
    /// The prefix of tenant directory names (`TENANT_DATABASE_PREFIX`).
    public var directoryPrefix: String
    /// The largest message text in bytes (`TENANT_MAX_MESSAGE_BYTES`).
    public var maxMessageBytes: Int
    /// The plan of new tenants (`TENANT_DEFAULT_PLAN`).
    public var defaultPlan: Plan
    /// Limits that replace the default plan's own (`TENANT_MAX_USERS`, `TENANT_MAX_STORAGE_GB`,
    /// `TENANT_MAX_MESSAGES_PER_DAY`); nil keeps the plan's.
    public var maxUsers: Int64?
    public var maxStorageBytes: Int64?
    public var maxMessagesPerDay: Int64?
    /// The operator token; nil reads or makes `<data>/admin.token`.
    public var adminToken: String?
    /// The size past which a log starts a new segment.
    public var segmentSize: Int
    /// Milliseconds since the Unix epoch; replaceable in tests.
    public var clock: @Sendable () -> Int64
    /// How tenants are kept apart (`TENANT_ISOLATION_STRATEGY`).
    public var isolation: IsolationStrategy
    /// False serves one implicit tenant `default` (`MULTI_TENANCY_ENABLED=false`).
    public var multiTenancy: Bool
    /// The tenant reference forms accepted (`TENANT_ID_SOURCE`).
    public var idSources: Set<TenantIDSource>
    /// An operator's USE or path reference to an unknown, well-formed id creates it (`TENANT_AUTO_PROVISION`).
    public var autoProvision: Bool
    /// TENANT SIGNUP works without the operator (`TENANT_SELF_SIGNUP`).
    public var selfSignup: Bool
    /// Signups one client address (an IPv6 /64 counting as one) may make per minute
    /// (`TENANT_SIGNUPS_PER_MINUTE`).
    public var signupsPerMinute: Int
    /// Signups all clients together may make per minute (`TENANT_SIGNUPS_PER_MINUTE_TOTAL`).
    public var signupsPerMinuteTotal: Int
    /// The most tenants the server holds, however they are created (`TENANT_MAX_TENANTS`); 0 is no cap.
    public var maxTenants: Int
    /// Log bytes after which a tenant writes a checkpoint (`TENANT_CHECKPOINT_BYTES`).
    public var checkpointBytes: Int64
    /// The file operations of the logs (a fault-injecting layer in tests).
    public var fileSystem: any WALFileSystem
    /// Seconds without traffic after which a tenant's actor and files are closed
    /// (`TENANT_IDLE_SECONDS`, `database` strategy); 0 keeps every tenant open.
    public var idleSeconds: Int
    /// The server's memory budget in bytes (`--maxmemory`): past its share for messages, tenants
    /// move their older messages to disk. 0 keeps every message in memory.
    public var maxMemory: Int
    /// Named data roots for data residency (`TENANT_REGIONS`, `--region`), by name: a tenant
    /// placed in one lives in `<root>/<prefix><id>/`. `database` strategy only.
    public var regions: [String: String] = [:]
    /// `--migrate-staging-limit`: the bytes every migration arriving here may hold in staging
    /// together (TENANT RECEIVE); 0 = no bound.
    public var migrateStagingLimit: Int64 = EngineConfiguration.defaultMigrateStagingLimit
    /// Where tenants run: the server's event loops (`--threads`), or nil for a lane each.
    public var placement: TenantPlacement?
    /// The default: 32 GiB, a large tenant's directory, on the data directory's disk.
    public static let defaultMigrateStagingLimit: Int64 = 32 << 30
    /// Migrations that may arrive at once.
    public static let maxIncomingMigrations = 4
    /// A migration arriving that has sent nothing for this long, and is not prepared, is dropped
    /// (its staging directory removed) when another needs the room, and at each start.
    public static let incomingIdleMilliseconds: Int64 = 10 * 60 * 1000

    /// Whether `name` may name a region: 1-32 bytes of `[a-z0-9-]`.
    public static func isValidRegionName(_ name: String) -> Bool {
        (1...32).contains(name.utf8.count)
            && name.utf8.allSatisfy {
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
                    || $0 == UInt8(ascii: "-")
            }
    }

    /// Creates a configuration with the contract's defaults.
    public init(dataDirectory: String, fsync: FsyncPolicy = .everysec) {
        self.dataDirectory = dataDirectory
        self.fsync = fsync
        self.directoryPrefix = "tenant_"
        self.maxMessageBytes = 65_536
        self.defaultPlan = .free
        self.adminToken = nil
        self.segmentSize = 8 << 20
        self.clock = EngineConfiguration.systemClock
        self.isolation = .database
        self.multiTenancy = true
        self.idSources = Set(TenantIDSource.allCases)
        self.autoProvision = false
        self.selfSignup = false
        self.signupsPerMinute = 5
        self.signupsPerMinuteTotal = 60
        self.maxTenants = 100_000
        self.checkpointBytes = 64 << 20
        self.fileSystem = POSIXFileSystem()
        self.idleSeconds = 300
        self.maxMemory = 0
    }

    /// The fsync policy's name, as `CONFIG GET appendfsync` shows it (`always`, `everysec`, `no`).
    public var fsyncPolicyName: String { self.fsync.rawValue }

    /// The shortest operator token the server starts with.
    public static let minimumAdminTokenLength = 32

    /// The id of the one tenant of single-tenant mode.
    public static let defaultTenantID = "default"

    /// The wall clock in milliseconds.
    @Sendable public static func systemClock() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }

    /// The limits a new tenant on `plan` gets.
    public func limits(for plan: Plan) -> PlanLimits {
        var limits = plan.defaultLimits
        if plan == self.defaultPlan {
            if let maxUsers { limits.maxUsers = maxUsers }
            if let maxStorageBytes { limits.maxStorageBytes = maxStorageBytes }
            if let maxMessagesPerDay { limits.maxMessagesPerDay = maxMessagesPerDay }
        }
        return limits
    }

    /// The settings of every tenant log. Records hold a message, its room and user: the bound leaves room for them.
    public var walConfiguration: WALConfiguration {
        WALConfiguration(
            fsync: self.fsync,
            segmentSize: self.segmentSize,
            maxRecordSize: max(WALLimits.defaultMaxRecordSize, self.maxMessageBytes + 4096)
        )
    }

    /// The settings of the shared log: a record also carries its tenant id.
    public var sharedWALConfiguration: WALConfiguration {
        var configuration = self.walConfiguration
        configuration.maxRecordSize += 256
        return configuration
    }

    /// The names of the data directory.
    public var layout: DataLayout { DataLayout(root: self.dataDirectory, prefix: self.directoryPrefix) }
}
