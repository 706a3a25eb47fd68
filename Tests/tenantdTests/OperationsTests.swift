import Foundation
import Synchronization
import TenantMetrics
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Operator-facing behaviour of the real binaries: configuration from the environment,
/// `tenantctl verify`, and a damaged tenant that leaves the others serving.
@Suite("Operations", .serialized)
struct OperationsTests {
    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static var tenantctl: String {
        (TenantdProcess.binaryPath as NSString).deletingLastPathComponent + "/tenantctl"
    }

    @Test func adminTokenFromTheEnvironmentAndNoTokenFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(
            dataDirectory: dir.path + "/data",
            environment: ["TENANT_ADMIN_TOKEN": "s3cret-operator-token-0123456789abcdef", "TENANTD_FSYNC": "always"]
        )
        let client = try server.client()
        #expect(try client.call("AUTH", "admin", "wrong").errorCode == "WRONGPASS")
        #expect(try client.call("AUTH", "admin", "s3cret-operator-token-0123456789abcdef") == .simple("OK"))
        #expect(try client.call("CONFIG", "GET", "appendfsync").elements?.last?.string == "always")
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/data/admin.token"))
        #expect(server.stop() == 0)
    }

    @Test func verifyReportsHealthyAndDamagedTenantsAndTheOthersServeOn() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data)
        let admin = try server.operatorClient()
        let (idA, tokenA) = try admin.createTenant(name: "A", subdomain: "tenant-a", owner: "owner")
        let tokenB = try admin.createTenant(name: "B", subdomain: "tenant-b", owner: "owner").token
        let ownerA = try server.login("owner@tenant-a", tokenA)
        for index in 1...5 { #expect(try ownerA.call("POST", "r", "m\(index)") == .integer(Int64(index))) }
        #expect(server.stop() == 0)

        let healthy = try Self.run(Self.tenantctl, ["verify", data])
        #expect(healthy.status == 0, "\(healthy.output)")
        #expect(healthy.output.contains("OK   \(data)/tenant_\(idA): tenant \(idA), checkpoint at lsn 7"))
        #expect(healthy.output.contains("5 messages in 1 rooms, 1 users"))

        // The clean stop compacted A into a checkpoint. Damage a byte inside its first block:
        // corruption, not a torn tail, and no log left that could stand in for it.
        let first = "\(data)/tenant_\(idA)/checkpoint/00000000000000000007.ckpt"
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: first)))
        bytes[30] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: first))
        let damaged = try Self.run(Self.tenantctl, ["verify", data])
        #expect(damaged.status == 1)
        #expect(damaged.output.contains("BAD  \(data)/tenant_\(idA)"))
        #expect(damaged.output.contains(first))
        #expect(damaged.output.contains("offset 24"))

        server = try TenantdProcess(dataDirectory: data)
        let probe = try server.client()
        let refused = try probe.call("AUTH", "owner@\(idA)", tokenA)
        #expect(refused.errorCode == "IOERR" || refused.errorCode == "WRONGPASS", "\(refused)")
        // The operator is told exactly where: file and offset.
        let operatorClient = try server.client()
        #expect(try operatorClient.call("AUTH", "admin", server.adminToken()) == .simple("OK"))
        let quarantined = try #require(try operatorClient.call("USE", idA).errorText)
        #expect(quarantined.hasPrefix("IOERR"))
        #expect(quarantined.contains(first) && quarantined.contains("offset 24"), "\(quarantined)")
        let ownerB = try server.client()
        #expect(try ownerB.call("AUTH", "owner@tenant-b", tokenB) == .simple("OK"))
        #expect(try ownerB.call("POST", "r", "b goes on") == .integer(1))
        // Nothing of the damaged tenant was cut or rewritten.
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: first))) == bytes)
        #expect(server.stop() == 0)
    }

    /// Under `schema` the clean stop checkpoints the shared log; verify reads the checkpoint and
    /// the log after it, as recovery does, and counts every tenant.
    @Test func verifyReadsTheSharedLogsCheckpoint() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        let environment = ["TENANT_ISOLATION_STRATEGY": "schema"]
        var server = try TenantdProcess(dataDirectory: data, environment: environment)
        let admin = try server.operatorClient()
        let tokenA = try admin.createTenant(name: "A", subdomain: "tenant-a", owner: "owner").token
        _ = try admin.createTenant(name: "B", subdomain: "tenant-b", owner: "owner")
        let ownerA = try server.login("owner@tenant-a", tokenA)
        for index in 1...5 { #expect(try ownerA.call("POST", "r", "m\(index)") == .integer(Int64(index))) }
        #expect(server.stop() == 0)
        let verified = try Self.run(Self.tenantctl, ["verify", data])
        #expect(verified.status == 0, "\(verified.output)")
        // Two tenants of two records each, then five messages: the checkpoint covers lsn 9.
        #expect(verified.output.contains("2 tenants, checkpoint at lsn 9 + 0 records to lsn 9"), "\(verified.output)")
        #expect(verified.output.contains("5 messages in 1 rooms, 2 users"), "\(verified.output)")
        // And the server serves it all again from that checkpoint.
        server = try TenantdProcess(dataDirectory: data, environment: environment)
        let again = try server.login("owner@tenant-a", tokenA)
        #expect(try again.call("POST", "r", "m6") == .integer(6))
        #expect(server.stop() == 0)
    }

    @Test func repairKeepsTheValidPrefixAndSaysWhatItDropped() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var server = try TenantdProcess(dataDirectory: data)
        let (id, token) = try server.operatorClient().createTenant(name: "A", subdomain: "tenant-a")
        // Three segments: the creation's (which round 0 goes on writing: a new tenant keeps its
        // creation's writer), then one per start after a kill -9 (no checkpoint).
        for round in 0..<3 {
            if round > 0 { server = try TenantdProcess(dataDirectory: data) }
            let owner = try server.login("alice@tenant-a", token)
            for index in 1...5 { #expect(try owner.call("POST", "r", "round \(round) message \(index)").int != nil) }
            server.stop(signal: SIGKILL)
        }
        let tenant = "\(data)/tenant_\(id)"
        let segments = try FileManager.default.contentsOfDirectory(atPath: tenant + "/wal").filter {
            $0.hasSuffix(".wal")
        }.sorted()
        #expect(segments.count == 3)
        let middle = tenant + "/wal/" + segments[1]
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: middle)))
        bytes[bytes.count - 5] ^= 0x01  // inside the middle segment's last record: not a torn tail
        try Data(bytes).write(to: URL(fileURLWithPath: middle))
        #expect(try Self.run(Self.tenantctl, ["verify", tenant]).status == 1)

        let repaired = try Self.run(Self.tenantctl, ["repair", tenant])
        #expect(repaired.status == 0, "\(repaired.output)")
        #expect(repaired.output.contains("REPAIRED \(tenant): now 11 log records to lsn 11"), "\(repaired.output)")
        #expect(repaired.output.contains("cut \(middle) at offset"))
        #expect(repaired.output.contains("moved the later segment \(tenant)/wal/\(segments[2]) aside"))
        #expect(FileManager.default.fileExists(atPath: middle + ".broken"))
        #expect(FileManager.default.fileExists(atPath: tenant + "/wal/" + segments[2] + ".broken"))
        let verified = try Self.run(Self.tenantctl, ["verify", tenant])
        #expect(verified.status == 0, "\(verified.output)")
        #expect(verified.output.contains("9 messages"))

        server = try TenantdProcess(dataDirectory: data)
        let owner = try server.client()
        #expect(try owner.call("AUTH", "alice@tenant-a", token) == .simple("OK"))
        let texts = try #require(try owner.call("HISTORY", "r", "LIMIT", "100").elements).compactMap {
            $0.elements?[3].string
        }
        #expect(texts == (1...5).map { "round 0 message \($0)" } + (1...4).map { "round 1 message \($0)" })
        #expect(try owner.call("POST", "r", "after the repair") == .integer(10))
        #expect(server.stderrText().contains("was repaired"))
        #expect(server.stop() == 0)
    }

    @Test func idleTenantsArePassivatedOnlyWhenNoConnectionHoldsThem() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        let server = try TenantdProcess(dataDirectory: data, environment: ["TENANT_IDLE_SECONDS": "1"])
        let admin = try server.operatorClient()
        let (id, token) = try admin.createTenant(name: "A", subdomain: "tenant-a")
        let (otherID, otherToken) = try admin.createTenant(name: "B", subdomain: "tenant-b")
        let checkpoints = "\(data)/tenant_\(id)/checkpoint"
        let otherCheckpoints = "\(data)/tenant_\(otherID)/checkpoint"
        var owner: RESPTestClient? = try server.client()
        #expect(try owner?.call("AUTH", "alice@tenant-a", token) == .simple("OK"))
        #expect(try owner?.call("POST", "r", "hello") == .integer(1))
        // B, used as A was and then let go, is the clock: once B is passivated, A has been idle as long.
        let other = try server.login("alice@tenant-b", otherToken)
        #expect(try other.call("POST", "r", "hello") == .integer(1))
        other.shutdown()
        try waitUntil("tenant B to be passivated") {
            (try? FileManager.default.contentsOfDirectory(atPath: otherCheckpoints).count) == 1
        }
        // A is held by a connection: still open, no checkpoint written.
        #expect(!FileManager.default.fileExists(atPath: checkpoints))
        #expect(try owner?.call("POST", "r", "still here") == .integer(2))
        owner = nil
        // Let go: passivated, and closing wrote its checkpoint. The next use opens it again.
        try waitUntil("tenant A to be passivated") {
            (try? FileManager.default.contentsOfDirectory(atPath: checkpoints).count) == 1
        }
        let again = try server.client()
        #expect(try again.call("AUTH", "alice@tenant-a", token) == .simple("OK"))
        #expect(try again.call("HISTORY", "r").elements?.count == 2)
        #expect(server.stop() == 0)
    }

    @Test func snapshotWhileServingThenAttachOrStartElsewhereAndDetach() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let serverA = try TenantdProcess(dataDirectory: dir.path + "/a")
        let adminA = try serverA.operatorClient()
        let acme = try adminA.createTenant(name: "Acme", subdomain: "acme", plan: "pro")
        let owner = try serverA.login("alice@acme", acme.token)
        let bobToken = try #require(try owner.call("USER", "ADD", "bob").string)
        for index in 1...100 { #expect(try owner.call("POST", "general", "m\(index)") == .integer(Int64(index))) }
        // A writer keeps posting while the snapshot is taken.
        let port = serverA.port
        let stop = Mutex(false)
        let writer = Thread {
            guard let client = try? RESPTestClient(port: port),
                (try? client.call("AUTH", "alice@acme", acme.token)) == .simple("OK")
            else { return }
            while !stop.withLock({ $0 }) { _ = try? client.pipeline((0..<20).map { ["POST", "busy", "b\($0)"] }) }
        }
        writer.start()
        // The snapshot is taken while that writer is known to be writing.
        try waitUntil("the writer's first message") {
            try owner.call("HISTORY", "busy", "LIMIT", "1").elements?.isEmpty == false
        }
        let snapshots = dir.path + "/snapshots"
        try FileManager.default.createDirectory(atPath: snapshots, withIntermediateDirectories: true)
        let reply = try #require(try adminA.call("TENANT", "SNAPSHOT", "acme", snapshots).fields)
        stop.withLock { $0 = true }
        let path = try #require(reply["path"]?.string)
        let lsn = try #require(reply["lsn"]?.int)
        #expect(path == snapshots + "/tenant_\(acme.id)")
        #expect(lsn >= 103)
        #expect(try adminA.call("TENANT", "SNAPSHOT", "acme", snapshots).errorCode == "EXISTS")
        #expect(try adminA.call("TENANT", "SNAPSHOT", "acme", "relative/dir").errorCode == "INVALID")
        #expect(try adminA.call("TENANT", "SNAPSHOT", "acme", snapshots + "/../x").errorCode == "INVALID")
        #expect(try adminA.call("TENANT", "SNAPSHOT", "acme", dir.path + "/missing").errorCode == "NOTFOUND")
        let verified = try Self.run(Self.tenantctl, ["verify", path])
        #expect(verified.status == 0, "\(verified.output)")
        #expect(verified.output.contains("to lsn \(lsn), "), "\(verified.output)")

        // Another server: the snapshot placed in its data directory, then ATTACH while it runs.
        let serverB = try TenantdProcess(dataDirectory: dir.path + "/b")
        try FileManager.default.copyItem(atPath: path, toPath: dir.path + "/b/tenant_\(acme.id)")
        let adminB = try serverB.operatorClient()
        #expect(try adminB.call("TENANT", "ATTACH", acme.id).fields?["subdomain"]?.string == "acme")
        #expect(try adminB.call("TENANT", "ATTACH", acme.id).errorCode == "EXISTS")
        #expect(try adminB.call("TENANT", "ATTACH", "nosuch").errorCode == "NOTFOUND")
        let ownerB = try serverB.login("alice@acme", acme.token)
        _ = try serverB.login("bob@acme", bobToken)
        let general = try #require(try ownerB.call("HISTORY", "general", "AFTER", "0", "LIMIT", "1000").elements)
        #expect(general.compactMap { $0.elements?[3].string } == (1...100).map { "m\($0)" })
        let busy = try #require(try ownerB.call("HISTORY", "busy", "AFTER", "0", "LIMIT", "1000").elements)
        #expect(busy.enumerated().allSatisfy { $0.element.elements?[0].int == Int64($0.offset + 1) })
        #expect(try ownerB.call("POST", "general", "on b") == .integer(101))
        #expect(serverB.stop() == 0)

        // A third server started on a data directory holding the snapshot serves it too.
        let serverC = try TenantdProcess(dataDirectory: dir.path + "/c")
        #expect(serverC.stop() == 0)
        try FileManager.default.copyItem(atPath: path, toPath: dir.path + "/c/tenant_\(acme.id)")
        let restarted = try TenantdProcess(dataDirectory: dir.path + "/c")
        #expect(try restarted.login("bob@acme", bobToken).call("ROOMS").elements?.count == 2)
        #expect(restarted.stop() == 0)

        // DETACH on the first server: forgotten, not deleted; ATTACH brings it back.
        #expect(try adminA.call("TENANT", "DETACH", "acme") == .simple("OK"))
        #expect(try serverA.client().call("AUTH", "alice@acme", acme.token).errorCode == "WRONGPASS")
        #expect(FileManager.default.fileExists(atPath: dir.path + "/a/tenant_\(acme.id)/checkpoint"))
        #expect(try adminA.call("TENANT", "ATTACH", acme.id).fields?["tenant_id"]?.string == acme.id)
        #expect(
            try serverA.login("alice@acme", acme.token).call("HISTORY", "general", "LIMIT", "1").elements?.count == 1
        )
        #expect(serverA.stop() == 0)
    }

    /// A server with a metrics listener on a free port (tries a few random ones).
    static func startWithMetrics(
        dataDirectory: String,
        arguments: [String] = []
    ) throws -> (server: TenantdProcess, metricsPort: Int) {
        for _ in 0..<5 {
            let port = Int.random(in: 41_000...60_000)
            guard
                let server = try? TenantdProcess(
                    dataDirectory: dataDirectory,
                    arguments: arguments + ["--metrics-port", String(port)]
                )
            else { continue }
            if !server.stderrText().contains("metrics listener not started") { return (server, port) }
            _ = server.stop()
        }
        throw UnexpectedReply(description: "no free metrics port in five tries")
    }

    /// A GET over a plain socket.
    static func httpGet(port: Int, path: String) throws -> String {
        let client = try RESPTestClient(port: port)
        try client.send(raw: Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8))
        return String(decoding: client.readToEnd(), as: UTF8.self)
    }

    /// An IOERR is logged for the operator and answered to the client: counted once all the same
    /// (issue 22, point 4): the damaged tenant's `USE` fails once, and is counted once.
    @Test func oneIOERRCountsOnce() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        var (server, metricsPort) = try Self.startWithMetrics(dataDirectory: data)
        let admin = try server.operatorClient()
        let id = try admin.createTenant(name: "A", subdomain: "tenant-a", owner: "owner").id
        #expect(server.stop() == 0)
        // The clean stop left a checkpoint: a flipped byte inside it is corruption.
        let checkpoints = data + "/tenant_\(id)/checkpoint"
        let name = try #require(
            try FileManager.default.contentsOfDirectory(atPath: checkpoints).first { $0.hasSuffix(".ckpt") }
        )
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: checkpoints + "/" + name)))
        bytes[30] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: checkpoints + "/" + name))

        (server, metricsPort) = try Self.startWithMetrics(dataDirectory: data)
        let operatorClient = try server.operatorClient()
        #expect(try operatorClient.call("USE", id).errorCode == "IOERR")
        var metrics = ""
        try waitUntil("the metrics endpoint") {
            metrics = try Self.httpGet(port: metricsPort, path: "/metrics")
            return metrics.contains(#"tenantd_command_errors_total{code="IOERR"}"#)
        }
        #expect(metrics.contains("tenantd_command_errors_total{code=\"IOERR\"} 1\n"), "\(metrics)")
        #expect(server.stop() == 0)
    }

    /// Every family `/metrics` exports is declared once (``MetricFamily``), with the type and
    /// HELP text the scrape shows; every declared INFO field is in INFO; the declarations' names
    /// are unique, well formed and suffixed as Prometheus expects (issue 22, point 4).
    @Test func everyMetricFamilyIsDeclaredOnceAndTheScrapeAndINFOFollowTheDeclarations() throws {
        let names = MetricFamily.all.map(\.name)
        #expect(Set(names).count == names.count, "a family declared twice")
        for family in MetricFamily.all {
            #expect(MetricFamily.named(family.name) == family)
            #expect(!family.help.isEmpty && !family.help.contains("\n"), "\(family.name)")
            #expect(family.name.allSatisfy { $0.isLowercase || $0 == "_" }, "\(family.name)")
            switch family.kind {
            case .counter: #expect(family.name.hasSuffix("_total"), "\(family.name)")
            case .histogram: #expect(family.name.hasSuffix("_seconds"), "\(family.name)")
            case .gauge, .untyped: #expect(!family.name.hasSuffix("_total"), "\(family.name)")
            }
        }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (running, metricsPort) = try Self.startWithMetrics(dataDirectory: dir.path + "/a")
        let admin = try running.operatorClient()
        let owner = try running.login("alice@acme", try admin.createTenant(name: "A", subdomain: "acme").token)
        #expect(try owner.call("POST", "r", "x") == .integer(1))
        #expect(try owner.call("POST", "bad room", "x").errorCode == "INVALID")
        var metrics = ""
        try waitUntil("the metrics endpoint") {
            metrics = try Self.httpGet(port: metricsPort, path: "/metrics")
            return metrics.contains("tenant_requests_total")
        }
        var typed: [String: String] = [:]
        var helped: [String: String] = [:]
        for line in metrics.split(whereSeparator: \.isNewline).map(String.init) {
            let words = line.split(separator: " ", maxSplits: 3).map(String.init)
            guard words.count >= 4, words[0] == "#" else { continue }
            if words[1] == "TYPE" { typed[words[2]] = words[3] }
            if words[1] == "HELP" { helped[words[2]] = words[3] }
        }
        #expect(typed.count >= 15, "\(typed.keys.sorted())")
        for (name, kind) in typed {
            let family = try #require(MetricFamily.named(name), "\(name) is exported but not declared")
            #expect(kind == family.kind.rawValue, "\(name)")
            #expect(helped[name] == family.help, "\(name)")
        }
        let info = try #require(try admin.call("INFO", "everything").string)
        let fields = Set(info.split(separator: "\r\n").compactMap { $0.split(separator: ":").first.map(String.init) })
        for family in MetricFamily.all {
            guard let field = family.infoField else { continue }
            #expect(fields.contains(field), "INFO has no \(field) (\(family.name))")
        }
        #expect(running.stop() == 0)
    }

    @Test func prometheusMetricsAndANonFatalBusyMetricsPort() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (running, metricsPort) = try Self.startWithMetrics(dataDirectory: dir.path + "/a")
        let owner = try running.login(
            "alice@acme",
            try running.operatorClient().createTenant(name: "A", subdomain: "acme").token
        )
        #expect(try owner.call("POST", "r", "x") == .integer(1))
        #expect(try owner.call("POST", "bad room", "x").errorCode == "INVALID")
        // Framing errors are counted by their codes too, and a failed AUTH.
        #expect(try owner.call("ECHO", String(repeating: "b", count: (1 << 20) + 1)).errorCode == "TOOBIG")
        let broken = try running.client()
        try broken.send(raw: Array("*1\r\n$x\r\n".utf8))
        #expect(try broken.read().errorCode == "PROTO")
        #expect(try running.client().call("AUTH", "admin", String(repeating: "w", count: 40)).errorCode == "WRONGPASS")
        var metrics = ""
        try waitUntil("the metrics endpoint") {
            metrics = try Self.httpGet(port: metricsPort, path: "/metrics")
            return metrics.contains("tenantd_commands_total")
        }
        #expect(metrics.hasPrefix("HTTP/1.1 200 OK"))
        #expect(metrics.contains(#"tenantd_commands_total{command="post"} 2"#), "\(metrics)")
        #expect(metrics.contains(#"tenantd_command_errors_total{code="INVALID"} 1"#))
        #expect(metrics.contains(#"tenantd_command_errors_total{code="TOOBIG"} 1"#), "\(metrics)")
        #expect(metrics.contains(#"tenantd_command_errors_total{code="PROTO"} 1"#))
        #expect(metrics.contains(#"tenantd_command_errors_total{code="WRONGPASS"} 1"#))
        #expect(metrics.contains("tenantd_auth_failures_total 1"))
        #expect(metrics.contains("tenantd_tenants_active 1"))
        #expect(metrics.contains("tenantd_connections_total"))
        #expect(try Self.httpGet(port: metricsPort, path: "/nothing").hasPrefix("HTTP/1.1 404"))
        // A second server on the same metrics port still serves clients; it says why it has no metrics.
        let second = try TenantdProcess(
            dataDirectory: dir.path + "/b",
            arguments: ["--metrics-port", String(metricsPort)]
        )
        #expect(try second.client().call("PING") == .simple("PONG"))
        try waitUntil("the second server's log line") { second.stderrText().contains("metrics listener not started") }
        #expect(second.stop() == 0)
        #expect(running.stop() == 0)
    }
}
