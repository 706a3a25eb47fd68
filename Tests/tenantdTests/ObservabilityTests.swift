import Foundation
import TenantEngine
import TenantMetrics
import TestSupport
import Testing

@testable import TenantServer

/// Issue 10, points 1, 2 and 6: the per-tenant series and the server's histograms on /metrics,
/// INFO in Redis's shape with a tenant's user seeing only its own tenant, and the security
/// events in the log.
@Suite("Observability", .serialized)
struct ObservabilityTests {
    // MARK: - In process

    @Test func aLatencyHistogramCountsEachDurationInItsBucket() {
        let histogram = LatencyHistogram()
        histogram.record(nanoseconds: 5_000)  // 5 µs
        histogram.record(nanoseconds: 10_000)  // 10 µs: a bound belongs to its own bucket
        histogram.record(nanoseconds: 30_000)  // 30 µs
        histogram.record(nanoseconds: 2_000_000)  // 2 ms
        histogram.record(nanoseconds: 20_000_000_000)  // 20 s: only in +Inf
        let snapshot = histogram.snapshot()
        let bounds = LatencyHistogram.bounds
        func atMost(_ seconds: Double) -> UInt64 { snapshot.cumulative[bounds.firstIndex(of: seconds)!] }
        #expect(atMost(0.000_01) == 2)
        #expect(atMost(0.000_025) == 2)
        #expect(atMost(0.000_05) == 3)
        #expect(atMost(0.001) == 3)
        #expect(atMost(0.002_5) == 4)
        #expect(atMost(10) == 4)
        #expect(snapshot.count == 5)
        #expect(abs(snapshot.sumSeconds - 20.002_045) < 1e-9)
        #expect(snapshot.cumulative == snapshot.cumulative.sorted())
    }

    @Test func helpLinesAreAddedOnlyWhereMissing() {
        let rendered = Array(
            """
            # TYPE a_total counter
            a_total 1
            # HELP b_total Already here.
            # TYPE b_total counter
            b_total 2
            # TYPE unknown gauge
            unknown 3

            """.utf8
        )
        let text = String(
            decoding: PrometheusText.addingHelp(to: rendered) {
                ["a_total": "A's\nhelp \\ text", "b_total": "other"][$0]
            },
            as: UTF8.self
        )
        #expect(
            text == """
                # HELP a_total A's\\nhelp \\\\ text
                # TYPE a_total counter
                a_total 1
                # HELP b_total Already here.
                # TYPE b_total counter
                b_total 2
                # TYPE unknown gauge
                unknown 3

                """
        )
        #expect(PrometheusText.escapedLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd")
    }

    /// Over the limit, the busiest tenants (by requests, then id) keep their series and the rest
    /// are summed under `_other`, every counter and gauge alike.
    @Test func tenantsOverTheLimitAreSummedUnderOther() {
        let book = TenantCounterBook()
        for (id, requests) in [("a", 5), ("b", 50), ("c", 7), ("d", 50), ("e", 1)] {
            let counters = book.counters(for: id)
            counters.requested(UInt64(requests), bytes: requests * 10)
            counters.replied(bytes: requests)
            counters.rejected(.storage)
        }
        #expect(book.counters(for: "b") === book.counters(for: "b"))
        let exposition = MetricsExposition(counters: book, tenantLimit: 3)
        let (shown, other, omitted) = exposition.tenantFigures()
        #expect(shown.map(\.id) == ["b", "c", "d"])
        #expect(omitted == 2)
        #expect(other?.id == "_other")
        #expect(other?.requests == 6)
        #expect(other?.bytesIn == 60)
        #expect(other?.bytesOut == 6)
        #expect(other?.rejections[TenantCounters.QuotaKind.storage.rawValue] == 2)
        let text = String(decoding: exposition.render([]), as: UTF8.self)
        #expect(text.contains(#"tenant_requests_total{tenant_id="b"} 50"#))
        #expect(text.contains(#"tenant_requests_total{tenant_id="_other"} 6"#))
        #expect(!text.contains(#"tenant_id="a""#))
        #expect(text.contains("tenant_series_omitted 2"))
        #expect(text.contains(#"tenant_quota_rejections_total{tenant_id="_other",kind="storage"} 2"#))
        // Every family is introduced once, with its help and type.
        for family in ["tenant_requests_total", "tenant_bytes_in_total", "tenant_storage_bytes", "tenant_users_count"] {
            #expect(text.components(separatedBy: "# HELP \(family) ").count == 2, "\(family)")
            #expect(text.components(separatedBy: "# TYPE \(family) ").count == 2, "\(family)")
        }
        // Within the limit nobody is summed.
        let all = MetricsExposition(counters: book, tenantLimit: 5).tenantFigures()
        #expect(all.shown.count == 5 && all.other == nil && all.omitted == 0)
        book.remove(id: "b")
        #expect(
            MetricsExposition(counters: book, tenantLimit: 5).tenantFigures().shown.map(\.id) == ["a", "c", "d", "e"]
        )
    }

    /// A tenant given its own series keeps them: `_other` never goes down when another tenant
    /// gets busier (a counter that goes down reads as a reset to `rate()`).
    @Test func theTenantsWithSeriesStayChosenSoOtherNeverGoesDown() {
        let book = TenantCounterBook()
        for (id, requests) in [("a", 5), ("b", 50), ("c", 7)] {
            book.counters(for: id).requested(UInt64(requests), bytes: 0)
        }
        let exposition = MetricsExposition(counters: book, tenantLimit: 2)
        let first = exposition.tenantFigures()
        #expect(first.shown.map(\.id) == ["b", "c"] && first.other?.requests == 5)
        book.counters(for: "a").requested(1000, bytes: 0)  // "a" is now the busiest
        let second = exposition.tenantFigures()
        #expect(second.shown.map(\.id) == ["b", "c"])
        #expect(second.other?.requests == 1005)
        // A new tenant goes to _other too; a deleted chosen one frees its place for the busiest.
        book.counters(for: "z").requested(3, bytes: 0)
        #expect(exposition.tenantFigures().other?.requests == 1008)
        book.remove(id: "c")
        let third = exposition.tenantFigures()
        #expect(third.shown.map(\.id) == ["a", "b"] && third.other?.requests == 3 && third.omitted == 1)
    }

    // MARK: - Through the server

    static func metric(_ text: String, _ series: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap {
            Double($0.split(separator: " ").last ?? "")
        }
    }

    static func scrape(_ port: Int) throws -> String {
        try OperationsTests.httpGet(port: port, path: "/metrics")
    }

    @Test func perTenantSeriesCountWhatEachTenantDid() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (server, metricsPort) = try OperationsTests.startWithMetrics(dataDirectory: dir.path + "/data")
        defer { _ = server.stop() }
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        let globex = try admin.createTenant(name: "Globex", subdomain: "globex")
        #expect(try admin.call("TENANT", "UPDATE", globex.id, "max_messages_per_day", "2").errorCode == nil)
        let alice = try server.login("alice@acme", acme.token)
        for index in 0..<5 {
            #expect(try alice.call("POST", "general", "hello \(index)") == .integer(Int64(index + 1)))
        }
        #expect(try alice.call("USER", "ADD", "bob").string != nil)
        let mallory = try server.login("alice@globex", globex.token)
        #expect(try mallory.call("POST", "general", "one") == .integer(1))
        #expect(try mallory.call("POST", "general", "two") == .integer(2))
        #expect(try mallory.call("POST", "general", "three").errorCode == "QUOTA")
        let storage = try #require(try alice.call("USAGE").fields?["storage_bytes"]?.int)

        var text = try Self.scrape(metricsPort)
        func value(_ family: String, _ id: String, _ extra: String = "") -> Double? {
            Self.metric(text, "\(family){tenant_id=\"\(id)\"\(extra)}")
        }
        // AUTH, five POSTs, USER ADD and USAGE for acme; AUTH and three POSTs for globex.
        #expect(value("tenant_requests_total", acme.id) == 8, "\(text)")
        #expect(value("tenant_requests_total", globex.id) == 4)
        #expect(value("tenant_messages_posted_total", acme.id) == 5)
        #expect(value("tenant_messages_posted_total", globex.id) == 2)
        #expect(value("tenant_quota_rejections_total", globex.id, ",kind=\"messages_per_day\"") == 1)
        #expect(value("tenant_quota_rejections_total", acme.id, ",kind=\"messages_per_day\"") == 0)
        #expect(value("tenant_users_count", acme.id) == 2)
        #expect(value("tenant_users_count", globex.id) == 1)
        #expect(value("tenant_storage_bytes", acme.id) == Double(storage))
        // The histograms: the POSTs ran, their records were written.
        #expect(Self.metric(text, #"tenantd_command_duration_seconds_count{command="post"}"#) == 8)
        #expect((Self.metric(text, "tenantd_wal_append_seconds_count") ?? 0) >= 1)
        #expect(text.contains("# TYPE tenantd_command_duration_seconds histogram"))
        #expect(text.contains("# HELP tenantd_commands_total "))

        // Bytes, exactly: a PING is 14 bytes framed, its reply 7.
        let bytesIn = try #require(value("tenant_bytes_in_total", acme.id))
        let bytesOut = try #require(value("tenant_bytes_out_total", acme.id))
        #expect(try alice.call("PING") == .simple("PONG"))
        text = try Self.scrape(metricsPort)
        #expect(value("tenant_bytes_in_total", acme.id) == bytesIn + 14)
        #expect(value("tenant_bytes_out_total", acme.id) == bytesOut + 7)
        #expect(value("tenant_requests_total", acme.id) == 9)
        // Another tenant's traffic moved nothing of globex's.
        #expect(value("tenant_requests_total", globex.id) == 4)

        // Series survive passivation and end with the tenant.
        #expect(try admin.call("TENANT", "DELETE", globex.id, globex.id) == .simple("OK"))
        text = try Self.scrape(metricsPort)
        #expect(!text.contains("tenant_id=\"\(globex.id)\""))
        #expect(value("tenant_requests_total", acme.id) == 9)
    }

    /// Pipelined POSTs, path-form rooms and framing errors, counted where they ran.
    @Test func requestsAreCountedToTheTenantTheyRanIn() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (server, metricsPort) = try OperationsTests.startWithMetrics(dataDirectory: dir.path + "/data")
        defer { _ = server.stop() }
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        let globex = try admin.createTenant(name: "Globex", subdomain: "globex")
        // 50 POSTs in one pipeline: one run through the tenant.
        let alice = try server.login("alice@acme", acme.token)
        let replies = try alice.pipeline((1...50).map { ["POST", "general", "m\($0)"] })
        #expect(replies.map(\.int) == (1...50).map { Int64($0) })
        // The operator in acme's context posts to globex by path: counted to globex.
        #expect(try admin.call("USE", acme.id) == .simple("OK"))
        let before = try Self.scrape(metricsPort)
        func value(_ text: String, _ family: String, _ id: String) -> Double {
            Self.metric(text, "\(family){tenant_id=\"\(id)\"}") ?? 0
        }
        let request = RESPTestClient.encode(["POST", "/tenant/\(globex.id)/general", "by path"])
        try admin.send(raw: request)
        #expect(try admin.read() == .integer(1))
        // A framing error after AUTH is no command: nothing counted.
        let broken = try server.login("alice@acme", acme.token)
        try broken.send(raw: Array("*1\r\n$x\r\n".utf8))
        #expect(try broken.read().errorCode == "PROTO")
        let after = try Self.scrape(metricsPort)
        #expect(
            value(after, "tenant_requests_total", globex.id) - value(before, "tenant_requests_total", globex.id) == 1
        )
        #expect(
            value(after, "tenant_bytes_in_total", globex.id) - value(before, "tenant_bytes_in_total", globex.id)
                == Double(request.count)
        )
        #expect(
            value(after, "tenant_bytes_out_total", globex.id) - value(before, "tenant_bytes_out_total", globex.id) == 4
        )
        // acme: its AUTH and 50 POSTs, the USE, the second AUTH; not the path-form POST nor the PROTO.
        #expect(value(after, "tenant_requests_total", acme.id) == 53, "\(after)")
        #expect(value(after, "tenant_messages_posted_total", acme.id) == 50)
        #expect(value(after, "tenant_bytes_out_total", acme.id) >= 50 * 4)
    }

    @Test func theTenantLimitSumsTheQuietestUnderOther() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (server, metricsPort) = try OperationsTests.startWithMetrics(
            dataDirectory: dir.path + "/data",
            arguments: ["--metrics-tenants", "1"]
        )
        defer { _ = server.stop() }
        let admin = try server.operatorClient()
        let busy = try admin.createTenant(name: "Busy", subdomain: "busy")
        let quiet = try admin.createTenant(name: "Quiet", subdomain: "quiet")
        let busyClient = try server.login("alice@busy", busy.token)
        for _ in 0..<3 { _ = try busyClient.call("PING") }
        _ = try server.login("alice@quiet", quiet.token)
        let text = try Self.scrape(metricsPort)
        #expect(Self.metric(text, "tenant_requests_total{tenant_id=\"\(busy.id)\"}") == 4, "\(text)")
        #expect(Self.metric(text, #"tenant_requests_total{tenant_id="_other"}"#) == 1)
        #expect(!text.contains("tenant_id=\"\(quiet.id)\""))
        #expect(Self.metric(text, "tenant_series_omitted") == 1)
        // Out of range: the server does not start.
        #expect(throws: (any Error).self) {
            try TenantdProcess(dataDirectory: dir.path + "/other", arguments: ["--metrics-tenants", "2000000"])
        }
    }

    /// INFO as Redis shapes it; the operator's sections, and a tenant's user limited to the server
    /// and its own tenant, whatever sections it asks for.
    @Test func infoShowsTheOperatorEverythingAndAUserOnlyItsTenant() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        defer { _ = server.stop() }
        #expect(try server.client().call("INFO").errorCode == "NOAUTH")
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        let globex = try admin.createTenant(name: "Globex", subdomain: "globex")
        let alice = try server.login("alice@acme", acme.token)
        #expect(try alice.call("POST", "general", "hi") == .integer(1))
        _ = try server.login("alice@globex", globex.token).call("POST", "secret-room", "globex only")

        let all = try #require(try admin.call("INFO").string)
        let headers = all.split(separator: "\r\n").filter { $0.hasPrefix("# ") }
        #expect(headers == ["# Server", "# Clients", "# Persistence", "# Stats", "# Tenants"])
        let fields = Self.fields(all)
        #expect(fields["redis_version"] == "7.0.0")
        #expect(fields["tcp_port"] == String(server.port))
        // The operator's and alice's connections, and globex's if its close is not seen yet.
        #expect(["2", "3"].contains(fields["connected_clients"]), "\(all)")
        #expect(fields["tenants"] == "2")
        #expect(fields["appendfsync"] == "everysec")
        #expect(fields["total_messages_posted"] == "2")
        #expect(fields["tenant_\(acme.id)"]?.contains("messages_posted=1,") == true)
        #expect(fields["tenant_\(globex.id)"]?.contains("messages_posted=1,") == true)
        #expect(try admin.call("INFO", "server").string?.split(separator: "\r\n").first == "# Server")
        #expect(try admin.call("INFO", "nosuch").string == "")
        #expect(
            try admin.call("INFO", "STATS", "clients").string?.split(separator: "\r\n").filter { $0.hasPrefix("# ") }
                == ["# Clients", "# Stats"]
        )

        // The user: the server and its own tenant, nothing of the other tenant or the server's traffic.
        let mine = try #require(try alice.call("INFO").string)
        #expect(mine.split(separator: "\r\n").filter { $0.hasPrefix("# ") } == ["# Server", "# Tenant"])
        let own = Self.fields(mine)
        #expect(own["tenant_id"] == acme.id)
        #expect(own["subdomain"] == "acme")
        #expect(own["messages_posted"] == "1")
        #expect(own["users"] == "1")
        for sections in [["all"], ["everything"], ["tenants", "stats", "clients", "persistence"], ["tenant"]] {
            let reply = try #require(try alice.call(["INFO"] + sections).string, "\(sections)")
            #expect(!reply.contains("tenant_\(globex.id)") && !reply.contains(":\(globex.id)"), "\(sections): \(reply)")
            #expect(!reply.localizedCaseInsensitiveContains("globex"), "\(sections)")
            #expect(!reply.contains("total_commands_processed"), "\(sections)")
            #expect(!reply.contains("# Tenants"), "\(sections)")
        }
        #expect(try alice.call("INFO", "stats").string == "")
    }

    static func fields(_ info: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in info.split(separator: "\r\n") where !line.hasPrefix("#") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
        return fields
    }

    /// Security events are single log lines with key=value metadata a log search can select.
    @Test func securityEventsAreLoggedWithTheirMetadata() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(
            dataDirectory: dir.path + "/data",
            environment: ["TENANT_MAX_MESSAGES_PER_DAY": "1"]
        )
        defer { _ = server.stop() }
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        #expect(
            try server.client().call("AUTH", "alice@acme", String(repeating: "x", count: 64)).errorCode == "WRONGPASS"
        )
        let alice = try server.login("alice@acme", acme.token)
        #expect(try alice.call("POST", "general", "the one") == .integer(1))
        #expect(try admin.call("TENANT", "SUSPEND", acme.id) == .simple("OK"))
        try waitUntil("the log lines") {
            let log = server.stderrText()
            return log.contains("event=tenant_suspended") && log.contains("event=quota_crossed")
        }
        let lines = server.stderrText().split(separator: "\n")
        let auth = try #require(lines.first { $0.contains("event=auth_failed") })
        #expect(auth.contains("connection=") && auth.contains("user=alice@acme") && auth.contains("address="))
        #expect(!auth.contains(acme.token))
        let suspended = try #require(lines.first { $0.contains("event=tenant_suspended") })
        #expect(suspended.contains("tenant_id=\(acme.id)"))
        let quota = try #require(lines.first { $0.contains("event=quota_crossed") })
        #expect(quota.contains("tenant_id=\(acme.id)") && quota.contains("quota=messages_per_day"))
        let created = try #require(lines.first { $0.contains("event=tenant_created") })
        #expect(created.contains("tenant_id=\(acme.id)"))
    }
}
