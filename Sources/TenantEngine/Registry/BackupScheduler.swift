import Foundation
import Logging
import Metrics
import Synchronization
import TenantMetrics
import WAL

/// A tenant's backup schedule, from its settings: `settings.backup_interval` (seconds, or a
/// number with `s`, `m`, `h` or `d`; at least 1 s, at most 365 d) and `settings.backup_keep` (how
/// many to keep, 1-1000, default 7).
public struct BackupPolicy: Sendable, Equatable {
    public var intervalSeconds: Int64
    public var keep: Int

    public static let defaultKeep = 7

    public init(intervalSeconds: Int64, keep: Int) {
        self.intervalSeconds = intervalSeconds
        self.keep = keep
    }

    /// The policy the settings describe; nil when the tenant has no `backup_interval`.
    /// - Throws: ``TenantError`` INVALID naming the setting that is wrong.
    public static func parse(_ settings: [String: String]) throws -> BackupPolicy? {
        guard let interval = settings["backup_interval"] else { return nil }
        return BackupPolicy(
            intervalSeconds: try Self.seconds(interval),
            keep: try settings["backup_keep"].map(Self.keep) ?? Self.defaultKeep
        )
    }

    /// Checks a setting as TENANT UPDATE writes it.
    static func validate(setting name: String, value: String) throws {
        switch name {
        case "backup_interval": _ = try Self.seconds(value)
        case "backup_keep": _ = try Self.keep(value)
        default: break
        }
    }

    private static func seconds(_ text: String) throws -> Int64 {
        let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        var digits = Substring(text)
        var unit: Int64 = 1
        if let last = text.last, let factor = units[last] {
            unit = factor
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.count <= 9, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
            let count = Int64(digits), count * unit >= 1, count * unit <= 365 * 86_400
        else {
            throw TenantError.invalid("backup_interval must be 1s to 365d: seconds, or a number with s, m, h or d")
        }
        return count * unit
    }

    private static func keep(_ text: String) throws -> Int {
        guard text.utf8.count <= 4, let count = Int(text), (1...1000).contains(count) else {
            throw TenantError.invalid("backup_keep must be 1-1000")
        }
        return count
    }
}

/// Backs tenants up on their own schedules into `<backup-dir>/<tenant-id>/<UTC timestamp>/`: a
/// TENANT SNAPSHOT written under `<timestamp>.partial` and renamed once whole, the newest
/// `backup_keep` kept. One backup at a time, whatever the number of tenants due; each is logged
/// (`event=backup_written` or `backup_failed`) and counted (`tenantd_backups_total{outcome}`,
/// `tenantd_backup_seconds`, `tenant_last_backup_timestamp_seconds`).
///
/// A restart goes on from the newest backup on disk: a tenant backed up an hour ago with an
/// interval of a day is next backed up in 23 hours, not at once.
public actor BackupScheduler {
    /// Backups written, and how long each took.
    public static let duration = LatencyHistogram()
    private static let written = Counter(label: MetricFamily.backups.name, dimensions: [("outcome", "written")])
    private static let failed = Counter(label: MetricFamily.backups.name, dimensions: [("outcome", "failed")])

    let registry: TenantRegistry
    /// The backup directory (`--backup-dir`).
    public nonisolated let directory: String
    let logger: Logger
    /// When each tenant was last backed up (ms), as read from disk on first sight, then kept.
    private var last: [String: Int64] = [:]
    /// Tenants whose last attempt failed, and when: retried after a minute or an interval,
    /// whichever is shorter, not at every tick.
    private var failedAt: [String: Int64] = [:]
    private var warnedStrategy = false

    public init(registry: TenantRegistry, directory: String, logger: Logger) {
        self.registry = registry
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        self.logger = logger
        // Both series from the start, so a dashboard sees a zero rather than nothing.
        _ = (Self.written, Self.failed)
    }

    /// Checks every `tick` for tenants due, until cancelled.
    public func run(tick: Duration = .seconds(1)) async {
        while !Task.isCancelled {
            await self.runDue()
            try? await Task.sleep(for: tick)
        }
    }

    /// Backs up, one after another, every tenant whose interval has passed.
    /// - Returns: the ids backed up.
    @discardableResult
    public func runDue() async -> [String] {
        guard self.registry.hasTenantDirectories else {
            if !self.warnedStrategy {
                self.warnedStrategy = true
                self.logger.warning("backups need the database strategy; --backup-dir is ignored")
            }
            return []
        }
        var done: [String] = []
        let schedules = await self.registry.backupSchedules()
        // Tenants deleted or unscheduled since are forgotten: the maps hold scheduled tenants only.
        let scheduled = Set(schedules.map(\.0))
        self.last = self.last.filter { scheduled.contains($0.key) }
        self.failedAt = self.failedAt.filter { scheduled.contains($0.key) }
        for (id, settings) in schedules {
            guard !Task.isCancelled else { break }
            guard let policy = try? BackupPolicy.parse(settings) else { continue }
            let now = self.registry.configuration.clock()
            if let failed = self.failedAt[id], failed <= now, now - failed < min(60_000, policy.intervalSeconds * 1000)
            {
                continue
            }
            // Due once the interval has passed, or when the last backup is dated after now (the
            // clock stepped back, or a name from elsewhere): never stuck waiting for the future.
            if let last = self.lastBackup(of: id), last <= now, now - last < policy.intervalSeconds * 1000 { continue }
            if await self.backup(id: id, keep: policy.keep, now: now) { done.append(id) }
        }
        return done
    }

    /// One backup of `id`, then the oldest beyond `keep` removed.
    private func backup(id: String, keep: Int, now: Int64) async -> Bool {
        let folder = self.folder(of: id)
        let name = Self.timestampName(now)
        let target = BackupFolder(path: folder).entry(name)
        let partial = BackupFolder(path: folder).partial(name)
        let start = LatencyHistogram.now()
        do {
            try await runBlocking {
                _ = try POSIXFile.makeDirectory(POSIXFile.parent(of: folder))
                _ = try POSIXFile.makeDirectory(folder)
                let fileSystem = POSIXFileSystem()
                if POSIXFile.exists(partial) { try fileSystem.removeTree(partial) }
            }
            guard !POSIXFile.exists(target) else { return false }  // two in one second: the one there stands
            let tenant = try await self.registry.tenant(id: id)
            tenant.retain()
            defer { tenant.release() }
            let lsn = try await tenant.snapshot(to: partial)
            try await runBlocking {
                try POSIXFile.rename(partial, to: target)
                try POSIXFile.fsyncDirectory(folder)
            }
            self.last[id] = now
            self.failedAt[id] = nil
            tenant.counters.lastBackupSeconds.store(now / 1000, ordering: .relaxed)
            Self.duration.record(since: start)
            Self.written.increment()
            let removed = await self.prune(folder: folder, keep: keep, written: name)
            self.logger.info(
                "backup written",
                metadata: [
                    "event": "backup_written", "tenant_id": "\(id)", "path": "\(target)", "lsn": "\(lsn)",
                    "removed": "\(removed)",
                ]
            )
            return true
        } catch {
            self.failedAt[id] = now
            Self.failed.increment()
            try? await runBlocking { try? POSIXFileSystem().removeTree(partial) }
            self.logger.error(
                "backup failed",
                metadata: ["event": "backup_failed", "tenant_id": "\(id)", "error": "\(error)"]
            )
            return false
        }
    }

    /// Removes the oldest backups of a tenant beyond `keep` (never the one just `written`), and any
    /// `.partial` left by a crash. Only names that are backups' are touched.
    /// - Returns: how many were removed.
    private func prune(folder: String, keep: Int, written: String) async -> Int {
        (try? await runBlocking {
            let fileSystem = POSIXFileSystem()
            let names = try POSIXFile.listDirectory(folder)
            for name in names
            where name.hasSuffix(".partial") && Self.timestamp(ofName: String(name.dropLast(8))) != nil {
                try? fileSystem.removeTree(BackupFolder(path: folder).entry(name))
            }
            let others = names.filter { $0 != written && Self.timestamp(ofName: $0) != nil }.sorted()
            let old = others.dropLast(max(0, keep - 1))
            for name in old { try fileSystem.removeTree(BackupFolder(path: folder).entry(name)) }
            return old.count
        }) ?? 0
    }

    /// Where `id`'s backups go: `<backup-dir>/<id>`, or for a tenant in a region
    /// `<region root>/.backups/<id>`, so that its data never leaves its region.
    public nonisolated func folder(of id: String) -> String {
        let region = self.registry.region(of: id)
        guard !region.isEmpty, let root = self.registry.configuration.regions[region] else {
            return BackupFolder(backupDirectory: self.directory, id: id).path
        }
        return BackupFolder(region: DataLayout(root: root), id: id).path
    }

    /// When `id` was last backed up: remembered, or the newest backup's name on disk (which the
    /// tenant's `tenant_last_backup_timestamp_seconds` then shows, so an alert on its age works
    /// from the start).
    private func lastBackup(of id: String) -> Int64? {
        if let last = self.last[id] { return last }
        let names = (try? POSIXFile.listDirectory(self.folder(of: id))) ?? []
        guard let newest = names.compactMap(Self.timestamp(ofName:)).max() else { return nil }
        self.last[id] = newest
        self.registry.counters.counters(for: id).lastBackupSeconds.store(newest / 1000, ordering: .relaxed)
        return newest
    }

    /// `20261204T170823Z`: UTC, sortable, safe in any file system.
    public static func timestampName(_ milliseconds: Int64) -> String {
        var time = time_t(milliseconds / 1000)
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(
            format: "%04d%02d%02dT%02d%02d%02dZ",
            Int(parts.tm_year) + 1900,
            Int(parts.tm_mon) + 1,
            Int(parts.tm_mday),
            Int(parts.tm_hour),
            Int(parts.tm_min),
            Int(parts.tm_sec)
        )
    }

    /// The time (ms) a backup's name stands for; nil for any other name.
    public static func timestamp(ofName name: String) -> Int64? {
        let utf8 = Array(name.utf8)
        guard utf8.count == 16, utf8[8] == UInt8(ascii: "T"), utf8[15] == UInt8(ascii: "Z") else { return nil }
        let digits = utf8[0..<8] + utf8[9..<15]
        guard digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
        func number(_ range: Range<Int>) -> Int32 {
            range.reduce(0) { $0 * 10 + Int32(utf8[$1] - UInt8(ascii: "0")) }
        }
        var parts = tm()
        parts.tm_year = number(0..<4) - 1900
        parts.tm_mon = number(4..<6) - 1
        parts.tm_mday = number(6..<8)
        parts.tm_hour = number(9..<11)
        parts.tm_min = number(11..<13)
        parts.tm_sec = number(13..<15)
        let seconds = timegm(&parts)
        guard seconds >= 0, Self.timestampName(Int64(seconds) * 1000) == name else { return nil }
        return Int64(seconds) * 1000
    }
}

extension TenantRegistry {
    /// The tenants with a backup schedule, and their settings.
    public func backupSchedules() -> [(String, [String: String])] {
        self.catalog.entries.values.filter { $0.settings["backup_interval"] != nil }
            .sorted { $0.tenantID < $1.tenantID }
            .map { ($0.tenantID, $0.settings) }
    }
}
