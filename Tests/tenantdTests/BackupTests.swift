import Foundation
import TenantEngine
import TestSupport
import Testing

/// Issue 10, point 5: scheduled per-tenant backups under `--backup-dir`, restored with
/// `tenantctl restore` then TENANT ATTACH.
@Suite("Scheduled backups", .serialized)
struct BackupTests {
    @Test func backupNamesAreUTCTimestampsThatReadBack() {
        let name = BackupScheduler.timestampName(1_796_404_226_789)
        #expect(name == "20261204T171026Z")
        #expect(BackupScheduler.timestamp(ofName: name) == 1_796_404_226_000)
        for other in ["20261204T171026Z.partial", "20261332T000000Z", "2026-12-04", "x0261204T171026Z", ""] {
            #expect(BackupScheduler.timestamp(ofName: other) == nil, "\(other)")
        }
    }

    @Test func aSchedulesSettingsAreCheckedWhenSet() throws {
        #expect(try BackupPolicy.parse(["backup_interval": "90m"]) == BackupPolicy(intervalSeconds: 5400, keep: 7))
        #expect(try BackupPolicy.parse(["backup_interval": "3600", "backup_keep": "3"])?.keep == 3)
        #expect(try BackupPolicy.parse([:]) == nil)
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        defer { _ = server.stop() }
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        for (key, value) in [
            ("backup_interval", "0"), ("backup_interval", "1x"), ("backup_interval", "366d"),
            ("backup_interval", "-5"), ("backup_interval", "99999999999999999999"), ("backup_keep", "0"),
            ("backup_keep", "1001"), ("backup_keep", "two"),
        ] {
            #expect(
                try admin.call("TENANT", "UPDATE", acme.id, "settings." + key, value).errorCode == "INVALID",
                "\(key)=\(value)"
            )
        }
        #expect(try admin.call("TENANT", "UPDATE", acme.id, "settings.backup_interval", "1d").errorCode == nil)
    }

    /// Backups on the tenant's schedule, the newest N kept, each a whole tenant directory; one
    /// restored on another server serves everything acknowledged before it was taken.
    @Test func backupsFollowTheScheduleAndRestoreOnAnotherServer() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let backups = dir.path + "/backups"
        let (server, metricsPort) = try OperationsTests.startWithMetrics(
            dataDirectory: dir.path + "/a",
            arguments: ["--backup-dir", backups]
        )
        defer { _ = server.stop() }
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        let quiet = try admin.createTenant(name: "Quiet", subdomain: "quiet")
        let alice = try server.login("alice@acme", acme.token)
        for index in 1...20 { #expect(try alice.call("POST", "general", "before \(index)") == .integer(Int64(index))) }
        #expect(
            try admin.call("TENANT", "UPDATE", acme.id, "settings.backup_interval", "1s", "settings.backup_keep", "2")
                .errorCode == nil
        )
        let folder = backups + "/" + acme.id
        func names() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted()
        }
        try waitUntil("three backups written") {
            server.stderrText().components(separatedBy: "event=backup_written").count - 1 >= 3
        }
        // The newest two are kept, named by their UTC time; no .partial is left.
        let kept = names()
        #expect(kept.count == 2, "\(kept)")
        #expect(kept.allSatisfy { BackupScheduler.timestamp(ofName: $0) != nil }, "\(kept)")
        // A tenant without a schedule has none.
        #expect(!FileManager.default.fileExists(atPath: backups + "/" + quiet.id))
        // Each verifies as a tenant directory holding the messages.
        let newest = folder + "/" + kept.last!
        let verified = try OperationsTests.run(OperationsTests.tenantctl, ["verify", newest])
        #expect(verified.status == 0 && verified.output.contains("20 messages"), "\(verified.output)")
        let metrics = try OperationsTests.httpGet(port: metricsPort, path: "/metrics")
        #expect((ObservabilityTests.metric(metrics, #"tenantd_backups_total{outcome="written"}"#) ?? 0) >= 3)
        #expect(ObservabilityTests.metric(metrics, #"tenantd_backups_total{outcome="failed"}"#) == 0)
        let last = try #require(
            ObservabilityTests.metric(metrics, "tenant_last_backup_timestamp_seconds{tenant_id=\"\(acme.id)\"}")
        )
        #expect(abs(last - Date().timeIntervalSince1970) < 30)

        // Restored on another server: tenantctl restore, then TENANT ATTACH.
        let other = try TenantdProcess(dataDirectory: dir.path + "/b")
        defer { _ = other.stop() }
        let restored = try OperationsTests.run(OperationsTests.tenantctl, ["restore", newest, dir.path + "/b"])
        #expect(restored.status == 0, "\(restored.output)")
        #expect(try other.operatorClient().call("TENANT", "ATTACH", acme.id).fields?["tenant_id"]?.string == acme.id)
        // The restore is a security event in the server's log, naming the backup.
        let restoredLine = try #require(
            other.stderrText().split(separator: "\n").first { $0.contains("event=tenant_restored") }
        )
        #expect(restoredLine.contains("tenant_id=\(acme.id)") && restoredLine.contains("from=\(newest)"))
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/b/tenant_\(acme.id)/RESTORED_FROM"))
        let history = try EndToEndTests.allMessages(try other.login("alice@acme", acme.token), room: "general")
        #expect(history.map(\.text) == (1...20).map { "before \($0)" })
    }

    /// After a restart the schedule goes on from the newest backup on disk.
    @Test func aRestartDoesNotBackUpAgainBeforeTheIntervalIsOver() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let backups = dir.path + "/backups"
        let first = try TenantdProcess(dataDirectory: dir.path + "/a", arguments: ["--backup-dir", backups])
        let admin = try first.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        #expect(try admin.call("TENANT", "UPDATE", acme.id, "settings.backup_interval", "1h").errorCode == nil)
        try waitUntil("the first backup") { first.stderrText().contains("event=backup_written") }
        #expect(first.stop() == 0)
        let folder = backups + "/" + acme.id
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder).count == 1)
        let second = try TenantdProcess(dataDirectory: dir.path + "/a", arguments: ["--backup-dir", backups])
        defer { _ = second.stop() }
        _ = try second.operatorClient().call("PING")
        Thread.sleep(forTimeInterval: 2.5)  // the scheduler ticks every second: two ticks at least
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder).count == 1)
        #expect(!second.stderrText().contains("event=backup_written"))
    }
}

/// Issue 10's "done when", as docs/operations.md tells an operator: place a tenant in a region,
/// back it up on a schedule, export it, and restore it on another server.
@Suite("The operator's walkthrough", .serialized)
struct OperatorWalkthroughTests {
    @Test func placeBackUpExportAndRestoreElsewhere() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let backups = dir.path + "/backups"
        try FileManager.default.createDirectory(atPath: dir.path + "/eu", withIntermediateDirectories: true)
        let source = try TenantdProcess(
            dataDirectory: dir.path + "/a",
            arguments: ["--region", "eu=\(dir.path)/eu", "--backup-dir", backups]
        )
        defer { _ = source.stop() }
        let admin = try source.operatorClient()
        let created = try #require(
            try admin.call("TENANT", "CREATE", "Acme", "acme", "OWNER", "alice", "REGION", "eu").fields
        )
        let id = try #require(created["tenant_id"]?.string)
        let token = try #require(created["owner_token"]?.string)
        let alice = try source.login("alice@acme", token)
        for index in 1...30 { #expect(try alice.call("POST", "general", "Grüße \(index)") == .integer(Int64(index))) }
        #expect(try admin.call("TENANT", "UPDATE", id, "settings.backup_interval", "1h").errorCode == nil)
        try waitUntil("the scheduled backup") { source.stderrText().contains("event=backup_written") }
        // A tenant in a region is backed up inside its region's root, never to the backup directory.
        #expect(!FileManager.default.fileExists(atPath: backups + "/" + id))
        let folder = dir.path + "/eu/.backups/" + id
        let backup = try #require(
            try FileManager.default.contentsOfDirectory(atPath: folder).first {
                BackupScheduler.timestamp(ofName: $0) != nil
            }
        )
        let backupPath = folder + "/" + backup

        // Export from the backup (offline), import on one server; restore on another.
        let export = try PortableTests.tenantctl(["export", backupPath])
        #expect(export.status == 0 && export.output.split(separator: "\n").count == 1 + 1 + 30)
        try FileManager.default.createDirectory(atPath: dir.path + "/b", withIntermediateDirectories: true)
        let imported = try PortableTests.tenantctl(["import", "-", dir.path + "/b", "--json"], input: export.output)
        #expect(imported.status == 0, "\(imported.errors)")
        let newToken = try #require(
            (try PortableTests.json(imported.output)["users"] as? [[String: String]])?.first?["token"]
        )
        let importedServer = try TenantdProcess(dataDirectory: dir.path + "/b")
        defer { _ = importedServer.stop() }
        let fromImport = try EndToEndTests.allMessages(
            try importedServer.login("alice@acme", newToken),
            room: "general"
        )
        #expect(fromImport.map(\.text) == (1...30).map { "Grüße \($0)" })

        let restoredServer = try TenantdProcess(dataDirectory: dir.path + "/c")
        defer { _ = restoredServer.stop() }
        #expect(try PortableTests.tenantctl(["restore", backupPath, dir.path + "/c"]).status == 0)
        #expect(try restoredServer.operatorClient().call("TENANT", "ATTACH", id).fields?["tenant_id"]?.string == id)
        // A restore keeps the tokens.
        let fromBackup = try EndToEndTests.allMessages(try restoredServer.login("alice@acme", token), room: "general")
        #expect(fromBackup.map(\.seq) == (1...30).map { Int64($0) })
    }
}
