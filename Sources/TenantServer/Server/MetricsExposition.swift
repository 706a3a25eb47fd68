import Synchronization
import TenantEngine
import TenantMetrics
import WAL

/// What `GET /metrics` answers: swift-prometheus's rendering of the swift-metrics series (given
/// their HELP lines here), then the series tenantd renders itself: the lock-free latency
/// histograms and the per-tenant series of the seed, capped at ``tenantLimit`` tenants.
public struct MetricsExposition: Sendable {
    /// The most tenants with series of their own; the rest are summed under `tenant_id="_other"`.
    public static let defaultTenantLimit = 1000
    /// The label value of the tenants over the limit (no tenant id can be it: ids are `[a-z0-9-]`).
    public static let otherTenants = "_other"

    let counters: TenantCounterBook
    let tenantLimit: Int
    /// The tenants with series of their own, kept from scrape to scrape: a tenant once given its
    /// own series keeps them (until it is deleted), so `_other` only ever grows, as a counter must.
    private let selection = Selection()

    final class Selection: Sendable {
        let ids = Mutex<Set<String>>([])
    }

    /// - Parameters:
    ///   - counters: every tenant's counters (the registry's).
    ///   - tenantLimit: the most tenants with series of their own, the busiest by requests.
    public init(counters: TenantCounterBook, tenantLimit: Int = Self.defaultTenantLimit) {
        self.counters = counters
        self.tenantLimit = max(0, tenantLimit)
    }

    /// The whole exposition, `rendered` being swift-prometheus's output.
    public func render(_ rendered: [UInt8]) -> [UInt8] {
        var text = PrometheusText()
        text.append(rendered: PrometheusText.addingHelp(to: rendered) { MetricFamily.named($0)?.help })
        self.renderHistograms(into: &text)
        self.renderTenants(into: &text)
        return text.bytes
    }

    private func renderHistograms(into text: inout PrometheusText) {
        var commands: [(String, LatencyHistogram.Snapshot)] = []
        for spec in CommandTable.all {
            let snapshot = spec.latency.snapshot()
            if snapshot.count > 0 { commands.append((spec.name.lowercased(), snapshot)) }
        }
        let other = ServerMetrics.otherLatency.snapshot()
        if other.count > 0 { commands.append(("other", other)) }
        if !commands.isEmpty {
            text.family(.commandDuration)
            for (name, snapshot) in commands {
                text.histogram(MetricFamily.commandDuration.name, [("command", name)], snapshot)
            }
        }
        for (family, histogram) in [
            (MetricFamily.walAppend, WALMetrics.append),
            (.walFsync, WALMetrics.fsync),
            (.checkpointDuration, CheckpointMetrics.duration),
            (.backupDuration, BackupScheduler.duration),
        ] {
            text.family(family)
            text.histogram(family.name, [], histogram.snapshot())
        }
    }

    /// One tenant's figures as a scrape reads them (or the sum of the tenants over the limit).
    struct TenantFigures {
        var id: String
        var requests: UInt64 = 0
        var messagesPosted: UInt64 = 0
        var bytesIn: UInt64 = 0
        var bytesOut: UInt64 = 0
        var rejections: [UInt64] = Array(repeating: 0, count: TenantCounters.QuotaKind.allCases.count)
        var storageBytes: Int64 = 0
        var users: Int64 = 0
        /// Seconds since the epoch of its last backup (the newest, for `_other`); 0 for none.
        var lastBackup: Int64 = 0
        /// Whether its storage and users are known (it was opened since the start).
        var hasGauges = false

        init(id: String) {
            self.id = id
        }

        init(_ counters: TenantCounters) {
            self.id = counters.tenantID
            self.add(counters)
        }

        mutating func add(_ counters: TenantCounters) {
            self.requests &+= counters.requests.load(ordering: .relaxed)
            self.messagesPosted &+= counters.messagesPosted.load(ordering: .relaxed)
            self.bytesIn &+= counters.bytesIn.load(ordering: .relaxed)
            self.bytesOut &+= counters.bytesOut.load(ordering: .relaxed)
            for kind in TenantCounters.QuotaKind.allCases {
                self.rejections[kind.rawValue] &+= counters.rejections(kind)
            }
            self.storageBytes &+= counters.storageBytes.load(ordering: .relaxed)
            self.users &+= counters.users.load(ordering: .relaxed)
            self.lastBackup = max(self.lastBackup, counters.lastBackupSeconds.load(ordering: .relaxed))
            self.hasGauges = self.hasGauges || counters.hasGauges.load(ordering: .relaxed)
        }
    }

    /// The tenants with series of their own (the busiest by requests, then by id), and the sum of
    /// the others if there are any.
    func tenantFigures() -> (shown: [TenantFigures], other: TenantFigures?, omitted: Int) {
        var all = self.counters.all().map(TenantFigures.init)
        all.sort { ($0.requests, $1.id) > ($1.requests, $0.id) }
        let limit = self.tenantLimit
        let chosen: Set<String> = self.selection.ids.withLock { selected in
            // Those chosen before that still exist, then the busiest others up to the limit.
            let present = Set(all.map(\.id))
            selected.formIntersection(present)
            if selected.count > limit {
                selected = Set(all.lazy.map(\.id).filter(selected.contains).prefix(limit))
            }
            for figures in all where selected.count < limit && !selected.contains(figures.id) {
                selected.insert(figures.id)
            }
            return selected
        }
        guard all.count > chosen.count else { return (all.sorted { $0.id < $1.id }, nil, 0) }
        var other = TenantFigures(id: Self.otherTenants)
        for figures in all where !chosen.contains(figures.id) {
            other.requests &+= figures.requests
            other.messagesPosted &+= figures.messagesPosted
            other.bytesIn &+= figures.bytesIn
            other.bytesOut &+= figures.bytesOut
            for index in other.rejections.indices { other.rejections[index] &+= figures.rejections[index] }
            other.storageBytes &+= figures.storageBytes
            other.users &+= figures.users
        }
        let shown = all.filter { chosen.contains($0.id) }.sorted { $0.id < $1.id }
        return (shown, other, all.count - shown.count)
    }

    private func renderTenants(into text: inout PrometheusText) {
        let (shown, other, omitted) = self.tenantFigures()
        let rows = shown + (other.map { [$0] } ?? [])
        text.family(.tenantSeriesOmitted)
        text.sample(MetricFamily.tenantSeriesOmitted.name, [], Int64(omitted))
        guard !rows.isEmpty else { return }
        let counters: [(MetricFamily, (TenantFigures) -> UInt64)] = [
            (.tenantRequests, { $0.requests }),
            (.tenantMessagesPosted, { $0.messagesPosted }),
            (.tenantBytesIn, { $0.bytesIn }),
            (.tenantBytesOut, { $0.bytesOut }),
        ]
        for (family, value) in counters {
            text.family(family)
            for row in rows { text.sample(family.name, [("tenant_id", row.id)], value(row)) }
        }
        text.family(.tenantQuotaRejections)
        for row in rows {
            for kind in TenantCounters.QuotaKind.allCases {
                text.sample(
                    MetricFamily.tenantQuotaRejections.name,
                    [("tenant_id", row.id), ("kind", kind.label)],
                    row.rejections[kind.rawValue]
                )
            }
        }
        text.family(.tenantStorage)
        for row in rows where row.hasGauges || row.id == Self.otherTenants {
            text.sample(MetricFamily.tenantStorage.name, [("tenant_id", row.id)], row.storageBytes)
        }
        // A gauge by meaning, typed untyped: `promtool check metrics` keeps the `_count` suffix of
        // the seed's name for histograms and summaries, and lints only typed families for it.
        text.family(.tenantUsers)
        for row in rows where row.hasGauges || row.id == Self.otherTenants {
            text.sample(MetricFamily.tenantUsers.name, [("tenant_id", row.id)], row.users)
        }
        let backedUp = shown.filter { $0.lastBackup > 0 }
        if !backedUp.isEmpty {
            text.family(.tenantLastBackup)
            for row in backedUp {
                text.sample(MetricFamily.tenantLastBackup.name, [("tenant_id", row.id)], row.lastBackup)
            }
        }
    }

}
