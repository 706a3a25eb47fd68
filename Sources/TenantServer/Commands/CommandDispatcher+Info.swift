import RESP
import Synchronization
import TenantEngine
import TenantMetrics
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CommandDispatcher {
    /// The INFO sections, in the order INFO prints them.
    enum InfoSection: String, CaseIterable {
        case server, clients, persistence, stats, tenants, tenant
    }

    /// The Redis version whose protocol and INFO layout tenantd follows, as `redis_version`
    /// (tools read it to pick features; `tenantd_version` is tenantd's own).
    static let redisCompatibilityVersion = "7.0.0"
    /// The most tenants INFO lists one by one (the busiest by requests); the rest are summed.
    static let infoTenantLimit = MetricsExposition.defaultTenantLimit

    /// INFO [section ...]: Redis's shape (`# Section` headers, `key:value` lines). The operator
    /// gets server, clients, persistence, stats and tenants (and tenant, in a tenant context); a
    /// tenant's user gets server and its own tenant's section only. A section the caller may
    /// not read, or that does not exist, is left out, as Redis leaves out unknown sections.
    func info(_ arguments: Arguments, principal: Principal, session: Session) async throws -> RESPValue {
        let isOperator: Bool
        if case .operator = principal { isOperator = true } else { isOperator = false }
        let allowed: [InfoSection] =
            isOperator
            ? [.server, .clients, .persistence, .stats, .tenants] + (session.tenant == nil ? [] : [.tenant])
            : [.server, .tenant]
        var wanted: Set<InfoSection> = []
        if arguments.count == 0 {
            wanted = Set(allowed)
        }
        for index in 0..<arguments.count {
            let word = arguments[index].lowercased()
            if ["default", "all", "everything"].contains(word) {
                wanted.formUnion(allowed)
            } else if let section = InfoSection(rawValue: word), allowed.contains(section) {
                wanted.insert(section)
            }
        }
        var text = ""
        for section in InfoSection.allCases where wanted.contains(section) {
            let lines: [(String, String)]
            switch section {
            case .server: lines = self.infoServer()
            case .clients: lines = self.infoClients()
            case .persistence: lines = self.infoPersistence()
            case .stats: lines = self.infoStats()
            case .tenants: lines = self.infoTenants()
            case .tenant: lines = try await self.infoTenant(principal: principal, session: session)
            }
            if !text.isEmpty { text += "\r\n" }
            text += "# \(section.rawValue.prefix(1).uppercased())\(section.rawValue.dropFirst())\r\n"
            for (key, value) in lines { text += "\(key):\(value)\r\n" }
        }
        return .bulkString(text)
    }

    private func infoServer() -> [(String, String)] {
        let uptime = ContinuousClock.now - ServerStats.shared.startedAt
        return [
            ("redis_version", Self.redisCompatibilityVersion),
            ("tenantd_version", Self.serverVersion),
            ("redis_mode", "standalone"),
            ("os", Self.operatingSystem),
            ("arch_bits", String(MemoryLayout<Int>.size * 8)),
            ("process_id", String(getpid())),
            ("run_id", Self.runID),
            ("tcp_port", String(self.port.load(ordering: .relaxed))),
            ("server_time_usec", String(Self.microsecondsSinceEpoch())),
            ("uptime_in_seconds", String(uptime.components.seconds)),
            ("uptime_in_days", String(uptime.components.seconds / 86_400)),
            ("isolation_strategy", self.registry.configuration.isolation.rawValue),
        ]
    }

    private func infoClients() -> [(String, String)] {
        [
            (MetricFamily.connectionsOpen.info, String(ServerStats.shared.connectionsOpen.load(ordering: .relaxed))),
            ("maxclients", String(self.limits.maxClients)),
            ("blocked_clients", "0"),
        ]
    }

    private func infoPersistence() -> [(String, String)] {
        let configuration = self.registry.configuration
        return [
            ("loading", "0"),
            ("aof_enabled", "1"),
            ("appendfsync", configuration.fsyncPolicyName),
            (MetricFamily.walAppend.info, String(WALMetrics.append.snapshot().count)),
            (MetricFamily.walFsync.info, String(WALMetrics.fsync.snapshot().count)),
            (MetricFamily.checkpointDuration.info, String(CheckpointMetrics.duration.snapshot().count)),
            ("maxmemory", String(configuration.maxMemory)),
            (MetricFamily.memoryMessages.info, String(self.registry.memory?.residentBytes ?? 0)),
            // Redis's names: the unsent replies of every connection, and their bound.
            ("mem_clients_normal", String(self.clientMemory.heldBytes)),
            ("maxmemory_clients", String(self.clientMemory.limit)),
        ]
    }

    private func infoStats() -> [(String, String)] {
        let stats = ServerStats.shared
        let tenants = self.registry.counters.all()
        var posted: UInt64 = 0
        var rejections: UInt64 = 0
        for counters in tenants {
            posted &+= counters.messagesPosted.load(ordering: .relaxed)
            for kind in TenantCounters.QuotaKind.allCases { rejections &+= counters.rejections(kind) }
        }
        return [
            (MetricFamily.connections.info, String(stats.connectionsReceived.load(ordering: .relaxed))),
            (MetricFamily.commands.info, String(stats.commands.load(ordering: .relaxed))),
            ("lane_commands_processed", String(stats.laneCommands.load(ordering: .relaxed))),
            ("lane_share_holds", String(stats.laneShareHolds.load(ordering: .relaxed))),
            ("connection_moves", String(stats.connectionMoves.load(ordering: .relaxed))),
            ("total_net_input_bytes", String(stats.bytesIn.load(ordering: .relaxed))),
            ("total_net_output_bytes", String(stats.bytesOut.load(ordering: .relaxed))),
            (MetricFamily.connectionsRefused.info, String(stats.connectionsRefused.load(ordering: .relaxed))),
            (MetricFamily.authFailures.info, String(stats.authFailures.load(ordering: .relaxed))),
            ("evicted_clients", String(self.clientMemory.evicted.load(ordering: .relaxed))),
            (MetricFamily.tenantMessagesPosted.info, String(posted)),
            (MetricFamily.tenantQuotaRejections.info, String(rejections)),
        ]
    }

    /// The tenant counts, then a line per tenant in Redis's keyspace shape
    /// (`tenant_<id>:requests=…,messages_posted=…`), the busiest first, at most
    /// ``infoTenantLimit`` of them; the others summed as `tenants_other`.
    private func infoTenants() -> [(String, String)] {
        let known = self.registry.tenantCounts.load(ordering: .relaxed)
        let active = self.registry.activeTenantCount.load(ordering: .relaxed)
        var lines: [(String, String)] = [
            ("tenants", String(known)),
            (MetricFamily.tenantsActive.info, String(active)),
            (MetricFamily.tenantsPassive.info, String(max(0, known - active))),
        ]
        let exposition = MetricsExposition(counters: self.registry.counters, tenantLimit: Self.infoTenantLimit)
        let (shown, other, omitted) = exposition.tenantFigures()
        lines.append(("tenants_listed", String(shown.count)))
        lines.append(("tenants_omitted", String(omitted)))
        let busiestFirst = shown.sorted { ($0.requests, $1.id) > ($1.requests, $0.id) }
        for figures in busiestFirst { lines.append(("tenant_\(figures.id)", Self.keyspaceLine(figures))) }
        if let other { lines.append(("tenants_other", Self.keyspaceLine(other))) }
        return lines
    }

    private static func keyspaceLine(_ figures: MetricsExposition.TenantFigures) -> String {
        let rejections = figures.rejections.reduce(0, &+)
        return "requests=\(figures.requests),messages_posted=\(figures.messagesPosted),"
            + "storage_bytes=\(figures.storageBytes),users=\(figures.users),"
            + "bytes_in=\(figures.bytesIn),bytes_out=\(figures.bytesOut),quota_rejections=\(rejections)"
    }

    /// The connection's own tenant: its limits and usage (as USAGE), and its counters.
    private func infoTenant(principal: Principal, session: Session) async throws -> [(String, String)] {
        let tenant = try session.contextTenant()
        let usage = try await tenant.usage(principal)
        let metadata = await tenant.metadata
        let counters = tenant.counters
        var lines: [(String, String)] = [
            ("tenant_id", metadata.tenantID),
            ("name", Self.infoValue(metadata.name)),
            ("subdomain", metadata.subdomain),
            ("plan", usage.plan.rawValue),
            ("is_active", metadata.isActive ? "1" : "0"),
            ("is_suspended", metadata.isSuspended ? "1" : "0"),
            ("users", String(usage.users)),
            ("max_users", String(usage.maxUsers)),
            ("storage_bytes", String(usage.storageBytes)),
            ("max_storage_bytes", String(usage.maxStorageBytes)),
            ("messages_today", String(usage.messagesToday)),
            ("max_messages_per_day", String(usage.maxMessagesPerDay)),
            ("messages_posted", String(counters.messagesPosted.load(ordering: .relaxed))),
            ("requests", String(counters.requests.load(ordering: .relaxed))),
            ("bytes_in", String(counters.bytesIn.load(ordering: .relaxed))),
            ("bytes_out", String(counters.bytesOut.load(ordering: .relaxed))),
        ]
        for kind in TenantCounters.QuotaKind.allCases {
            lines.append(("quota_rejections_\(kind.label)", String(counters.rejections(kind))))
        }
        return lines
    }

    /// A value on one INFO line: no line breaks (a tenant's name is the only free text here).
    private static func infoValue(_ value: String) -> String {
        String(value.map { $0 == "\r" || $0 == "\n" ? " " : $0 })
    }

    private static let operatingSystem: String = {
        var name = utsname()
        guard uname(&name) == 0 else { return "unknown" }
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        return "\(field(name.sysname)) \(field(name.release)) \(field(name.machine))"
    }()

    /// A random id of this process's run, as Redis's `run_id`.
    private static let runID: String = {
        var generator = SystemRandomNumberGenerator()
        return (0..<20).map { _ in
            let byte = UInt8.random(in: 0...255, using: &generator)
            return String(byte, radix: 16).count == 1 ? "0" + String(byte, radix: 16) : String(byte, radix: 16)
        }.joined()
    }()

    private static func microsecondsSinceEpoch() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Int64(time.tv_sec) * 1_000_000 + Int64(time.tv_nsec) / 1000
    }
}
