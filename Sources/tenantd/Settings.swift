import ArgumentParser
import Foundation
import Logging
import RESP
import TenantEngine
import TenantServer
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process environment.
struct Environment {
    var values: [String: String]

    static var current: Environment {
        var values: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                values[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return Environment(values: values)
    }

    subscript(_ name: String) -> String? {
        guard let value = self.values[name], !value.isEmpty else { return nil }
        return value
    }
}

/// Flags, then the environment, then the contract's defaults, in one place.
struct Settings {
    var engine: EngineConfiguration
    var server: ServerConfiguration
    var logLevel: Logger.Level
    /// The Prometheus port; 0 is off.
    var metricsPort: Int
    var metricsHost: String
    /// The most tenants with series of their own.
    var metricsTenants: Int
    /// Where scheduled backups go; nil: no backups.
    var backupDirectory: String?
    /// The event loops (`--threads`): the connections' and the tenants'.
    var threads: Int

    init(command: TenantdCommand, environment: Environment) throws {
        SettingLimits.checkRelations()
        let host = command.host ?? environment["TENANTD_HOST"] ?? "127.0.0.1"
        let port = try command.port ?? Self.integer(environment, "TENANTD_PORT") ?? 7379
        guard SettingLimits.ports.contains(port) else { throw ValidationError("port must be 0-65535") }
        var engine = try Self.engine(command: command, environment: environment)
        let threads = try command.threads ?? Self.integer(environment, "TENANTD_THREADS") ?? EventLoops.usableCPUs
        guard SettingLimits.threads.contains(threads) else { throw ValidationError("threads must be 1-1024") }
        self.threads = threads
        let regionList =
            command.regions.isEmpty
            ? (environment["TENANT_REGIONS"]?.split(separator: ",").map(String.init) ?? []) : command.regions
        engine.regions = try Self.regions(regionList, dataDirectory: engine.dataDirectory)
        self.engine = engine
        self.server = ServerConfiguration(host: host, port: port)
        self.server.limits = try Self.limits(command: command, environment: environment)
        self.server.tls = try Self.tls(command: command, environment: environment)
        if let domain = environment["TENANT_DOMAIN"] {
            let trimmed = domain.trimmingCharacters(in: CharacterSet(charactersIn: ".")).lowercased()
            guard !trimmed.isEmpty, trimmed.utf8.count <= SettingLimits.maxDomainLength else {
                throw ValidationError("TENANT_DOMAIN must be a domain name")
            }
            self.server.tenantDomain = trimmed
        }
        self.metricsHost = command.metricsHost ?? environment["TENANTD_METRICS_HOST"] ?? "127.0.0.1"
        self.metricsPort = try command.metricsPort ?? Self.integer(environment, "TENANTD_METRICS_PORT") ?? 9479
        guard SettingLimits.ports.contains(self.metricsPort) else {
            throw ValidationError("metrics port must be 0-65535")
        }
        self.metricsTenants =
            try command.metricsTenants ?? Self.integer(environment, "TENANTD_METRICS_TENANTS")
            ?? MetricsExposition.defaultTenantLimit
        guard SettingLimits.metricsTenants.contains(self.metricsTenants) else {
            throw ValidationError("metrics-tenants must be 0-1000000")
        }
        self.backupDirectory = (command.backupDir ?? environment["TENANTD_BACKUP_DIR"]).map(Self.trimmed)
        let levelName = command.logLevel ?? environment["TENANTD_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: levelName.lowercased()) else {
            throw ValidationError(
                "log level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        self.logLevel = level
    }

    /// The engine's settings: the data directory and its log, the tenants' defaults, the rates
    /// and the memory bounds.
    private static func engine(command: TenantdCommand, environment: Environment) throws -> EngineConfiguration {
        let dataDirectory = command.dataDir ?? environment["TENANTD_DATA_DIR"] ?? "./data"
        let fsyncName = command.fsync ?? environment["TENANTD_FSYNC"] ?? "everysec"
        guard let fsync = FsyncPolicy(rawValue: fsyncName.lowercased()) else {
            throw ValidationError("fsync must be always, everysec or no")
        }
        var engine = EngineConfiguration(dataDirectory: Self.trimmed(dataDirectory), fsync: fsync)
        engine.adminToken = command.adminToken ?? environment["TENANT_ADMIN_TOKEN"]
        if let prefix = environment["TENANT_DATABASE_PREFIX"] { engine.directoryPrefix = prefix }
        try Self.tenantDefaults(environment, into: &engine)
        try Self.rates(environment, into: &engine)
        if let text = command.maxmemory ?? environment["TENANTD_MAXMEMORY"] {
            guard let bytes = PubSubLimit.bytes(Substring(text)), bytes == 0 || bytes >= SettingLimits.minMaxMemory
            else {
                throw ValidationError("maxmemory must be 0 (no limit) or at least 32mb")
            }
            engine.maxMemory = bytes
        } else {
            engine.maxMemory = MemoryBudget.defaultMaxMemory
        }
        if let text = command.migrateStagingLimit ?? environment["TENANTD_MIGRATE_STAGING_LIMIT"] {
            guard let bytes = PubSubLimit.bytes(Substring(text)), bytes == 0 || bytes >= SettingLimits.minMigrateStaging
            else {
                throw ValidationError("migrate-staging-limit must be 0 (no bound) or at least 1mb")
            }
            engine.migrateStagingLimit = Int64(bytes)
        }
        if let token = engine.adminToken, token.count < EngineConfiguration.minimumAdminTokenLength {
            throw ValidationError(
                "the operator token (--admin-token or TENANT_ADMIN_TOKEN) must be at least "
                    + "\(EngineConfiguration.minimumAdminTokenLength) characters; "
                    + "make one with: openssl rand -hex 32"
            )
        }
        return engine
    }

    /// The seed's tenant settings: message size, default plan and quotas, the isolation
    /// strategy, the tenancy switches, and where a tenant id may come from.
    private static func tenantDefaults(_ environment: Environment, into engine: inout EngineConfiguration) throws {
        if let bytes = try Self.integer(environment, "TENANT_MAX_MESSAGE_BYTES") {
            guard SettingLimits.messageBytes.contains(bytes) else {
                throw ValidationError("TENANT_MAX_MESSAGE_BYTES must be 1-16777216")
            }
            engine.maxMessageBytes = bytes
        }
        if let planName = environment["TENANT_DEFAULT_PLAN"] {
            guard let plan = Plan(rawValue: planName.lowercased()) else {
                throw ValidationError("TENANT_DEFAULT_PLAN must be free, pro or enterprise")
            }
            engine.defaultPlan = plan
        }
        engine.maxUsers = try Self.integer(environment, "TENANT_MAX_USERS").map(Int64.init)
        engine.maxStorageBytes = try Self.integer(environment, "TENANT_MAX_STORAGE_GB").map { gigabytes in
            let (bytes, overflow) = Int64(gigabytes).multipliedReportingOverflow(by: PlanLimits.gigabyte)
            guard !overflow else {
                throw ValidationError("TENANT_MAX_STORAGE_GB must be at most \(Int64.max / PlanLimits.gigabyte)")
            }
            return bytes
        }
        engine.maxMessagesPerDay = try Self.integer(environment, "TENANT_MAX_MESSAGES_PER_DAY").map(Int64.init)
        if let name = environment["TENANT_ISOLATION_STRATEGY"] {
            guard let strategy = IsolationStrategy(rawValue: name.lowercased()) else {
                throw ValidationError("TENANT_ISOLATION_STRATEGY must be database, schema or shared")
            }
            engine.isolation = strategy
        }
        engine.multiTenancy = try Self.flag(environment, "MULTI_TENANCY_ENABLED") ?? true
        engine.autoProvision = try Self.flag(environment, "TENANT_AUTO_PROVISION") ?? false
        engine.selfSignup = try Self.flag(environment, "TENANT_SELF_SIGNUP") ?? false
        if let list = environment["TENANT_ID_SOURCE"] {
            var sources: Set<TenantIDSource> = []
            for item in list.split(separator: ",") {
                let name = item.trimmingCharacters(in: .whitespaces).lowercased()
                guard let source = TenantIDSource(rawValue: name) else {
                    throw ValidationError("TENANT_ID_SOURCE is a comma list of subdomain, header, path")
                }
                sources.insert(source)
            }
            guard !sources.isEmpty else { throw ValidationError("TENANT_ID_SOURCE names no source") }
            engine.idSources = sources
        }
    }

    /// Signup rates, checkpoint size, idle time and the tenant cap.
    private static func rates(_ environment: Environment, into engine: inout EngineConfiguration) throws {
        if let rate = try Self.integer(environment, "TENANT_SIGNUPS_PER_MINUTE") {
            guard rate > 0 else { throw ValidationError("TENANT_SIGNUPS_PER_MINUTE must be at least 1") }
            engine.signupsPerMinute = rate
        }
        if let bytes = try Self.integer(environment, "TENANT_CHECKPOINT_BYTES") {
            guard bytes >= SettingLimits.minCheckpointBytes else {
                throw ValidationError("TENANT_CHECKPOINT_BYTES must be at least 4096")
            }
            engine.checkpointBytes = Int64(bytes)
        }
        if let seconds = try Self.integer(environment, "TENANT_IDLE_SECONDS") {
            guard seconds <= Self.maxSeconds else {
                throw ValidationError("TENANT_IDLE_SECONDS must be at most \(Self.maxSeconds) (ten years)")
            }
            engine.idleSeconds = seconds
        }
        if let rate = try Self.integer(environment, "TENANT_SIGNUPS_PER_MINUTE_TOTAL") {
            guard rate > 0 else { throw ValidationError("TENANT_SIGNUPS_PER_MINUTE_TOTAL must be at least 1") }
            engine.signupsPerMinuteTotal = rate
        }
        if let cap = try Self.integer(environment, "TENANT_MAX_TENANTS") { engine.maxTenants = cap }
    }

    /// The TLS listener, when `--tls-port` is given.
    private static func tls(command: TenantdCommand, environment: Environment) throws -> TLSListener? {
        guard let tlsPort = try command.tlsPort ?? Self.integer(environment, "TENANTD_TLS_PORT") else { return nil }
        guard SettingLimits.ports.contains(tlsPort) else { throw ValidationError("tls-port must be 0-65535") }
        guard let certificate = command.tlsCertFile ?? environment["TENANTD_TLS_CERT_FILE"],
            let key = command.tlsKeyFile ?? environment["TENANTD_TLS_KEY_FILE"]
        else { throw ValidationError("--tls-port needs --tls-cert-file and --tls-key-file") }
        do {
            return try TLSListener(port: tlsPort, certificateFile: certificate, keyFile: key)
        } catch {
            throw ValidationError("cannot use the TLS certificate \(certificate) and key \(key): \(error)")
        }
    }

    /// Ten years: the longest period a setting in seconds takes (``SettingLimits/maxSeconds``).
    static var maxSeconds: Int { SettingLimits.maxSeconds }

    /// The contract's limits, each a flag or `TENANTD_` + its name.
    private static func limits(command: TenantdCommand, environment: Environment) throws -> ServerLimits {
        var limits = ServerLimits()
        if let clients = try command.maxClients ?? Self.integer(environment, "TENANTD_MAXCLIENTS") {
            guard SettingLimits.maxClients.contains(clients) else {
                throw ValidationError("maxclients must be 1-1000000")
            }
            limits.maxClients = clients
        }
        if let count = try command.fairShare ?? Self.integer(environment, "TENANTD_FAIR_SHARE") {
            guard SettingLimits.shares.contains(count) else { throw ValidationError("fair-share must be 0-1000000") }
            limits.fairShareWindow = count
        }
        if let budget = try command.turnBudget ?? Self.integer(environment, "TENANTD_TURN_BUDGET") {
            guard SettingLimits.shares.contains(budget) else { throw ValidationError("turn-budget must be 0-1000000") }
            limits.turnBudget = budget
        }
        if let move = try Self.flag(
            command.moveConnections,
            environment,
            "TENANTD_MOVE_CONNECTIONS",
            option: "move-connections"
        ) {
            limits.moveConnections = move
        }
        if let seconds = try command.timeout ?? Self.integer(environment, "TENANTD_TIMEOUT") {
            guard (0...Self.maxSeconds).contains(seconds) else {
                throw ValidationError("timeout must be 0-\(Self.maxSeconds) seconds")
            }
            limits.timeoutSeconds = seconds
        }
        if let seconds = try command.tcpKeepalive ?? Self.integer(environment, "TENANTD_TCP_KEEPALIVE") {
            guard SettingLimits.keepaliveSeconds.contains(seconds) else {
                throw ValidationError("tcp-keepalive must be 0-32767 seconds")
            }
            limits.tcpKeepaliveSeconds = seconds
        }
        if let text = command.protoMaxBulkLen ?? environment["TENANTD_PROTO_MAX_BULK_LEN"] {
            guard let bytes = PubSubLimit.bytes(Substring(text)), SettingLimits.protoMaxBulk.contains(bytes) else {
                throw ValidationError("proto-max-bulk-len must be 1kb-512mb")
            }
            limits.request.maxBulkLength = bytes
        }
        if let text = command.clientQueryBufferLimit ?? environment["TENANTD_CLIENT_QUERY_BUFFER_LIMIT"] {
            guard let bytes = PubSubLimit.bytes(Substring(text)), SettingLimits.queryBuffer.contains(bytes) else {
                throw ValidationError("client-query-buffer-limit must be 1mb-1gb")
            }
            limits.request.maxRequestBytes = bytes
        }
        if let count = try command.maxSubscriptions ?? Self.integer(environment, "TENANTD_MAX_SUBSCRIPTIONS") {
            guard SettingLimits.subscriptions.contains(count) else {
                throw ValidationError("max-subscriptions must be 1-10000000")
            }
            limits.maxSubscriptions = count
        }
        if let limit = try Self.outputBufferLimit(
            command.clientOutputBufferLimitPubsub ?? environment["TENANTD_CLIENT_OUTPUT_BUFFER_LIMIT_PUBSUB"],
            name: "pubsub",
            example: "32mb 8mb 60"
        ) {
            limits.pubSub = limit
        }
        if let limit = try Self.outputBufferLimit(
            command.clientOutputBufferLimitNormal ?? environment["TENANTD_CLIENT_OUTPUT_BUFFER_LIMIT_NORMAL"],
            name: "normal",
            example: "0 0 0"
        ) {
            limits.normal = limit
        }
        if let text = command.maxmemoryClients ?? environment["TENANTD_MAXMEMORY_CLIENTS"] {
            guard let bytes = PubSubLimit.bytes(Substring(text)),
                bytes == 0 || bytes >= SettingLimits.minMaxMemoryClients
            else {
                throw ValidationError("maxmemory-clients must be 0 (no bound) or at least 1mb")
            }
            limits.maxMemoryClients = bytes
        }
        return limits
    }

    /// A `client-output-buffer-limit-<name>` setting, `"<hard> <soft> <seconds>"`, when given.
    private static func outputBufferLimit(_ text: String?, name: String, example: String) throws -> PubSubLimit? {
        guard let text else { return nil }
        guard let limit = PubSubLimit(parsing: text), limit.softSeconds <= Self.maxSeconds else {
            throw ValidationError(
                "client-output-buffer-limit-\(name) is \"<hard> <soft> <seconds>\", as \"\(example)\""
            )
        }
        return limit
    }

    /// A yes/no option: the flag's value, else the environment's.
    private static func flag(
        _ value: String?,
        _ environment: Environment,
        _ name: String,
        option: String
    ) throws -> Bool? {
        guard let text = value ?? environment[name] else { return nil }
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ValidationError("\(option) must be yes or no (--\(option) or \(name))")
        }
    }

    private static func flag(_ environment: Environment, _ name: String) throws -> Bool? {
        guard let text = environment[name] else { return nil }
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ValidationError("\(name) must be true or false")
        }
    }

    private static func integer(_ environment: Environment, _ name: String) throws -> Int? {
        guard let text = environment[name] else { return nil }
        guard let value = Int(text), value >= 0 else { throw ValidationError("\(name) must be a non-negative integer") }
        return value
    }

    /// `data/` and `data` name the same directory; the ready line shows it without the slash.
    /// `NAME=DIR` pairs: valid, distinct names, each root its own (not the data directory, not
    /// another region's).
    private static func regions(_ pairs: [String], dataDirectory: String) throws -> [String: String] {
        var regions: [String: String] = [:]
        for pair in pairs {
            let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[1].isEmpty else {
                throw ValidationError("a region is NAME=DIR (TENANT_REGIONS=eu=/srv/eu,us=/srv/us), not '\(pair)'")
            }
            guard EngineConfiguration.isValidRegionName(parts[0]) else {
                throw ValidationError("region name '\(parts[0])' must be 1-32 bytes of [a-z0-9-]")
            }
            guard regions[parts[0]] == nil else { throw ValidationError("region '\(parts[0])' is given twice") }
            let root = Self.trimmed(parts[1])
            guard root != dataDirectory, !regions.values.contains(root) else {
                throw ValidationError("region '\(parts[0])' needs a root of its own, not \(root)")
            }
            regions[parts[0]] = root
        }
        return regions
    }

    private static func trimmed(_ path: String) -> String {
        var path = path
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        return path
    }
}
