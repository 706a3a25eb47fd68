import EngineTestSupport
import Foundation
import Logging
import TenantEngine
import TestSupport
import Testing
import WAL

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// Abuse from outside and from operators' mistakes: signup floods, token guessing, weak operator
/// tokens, numbers that would overflow, other local users reading files.
@Suite("Abuse")
struct AbuseTests {
    static func signupServer(_ path: String, _ environment: [String: String]) throws -> TenantdProcess {
        try TenantdProcess(dataDirectory: path, environment: ["TENANT_SELF_SIGNUP": "true"].merging(environment) { $1 })
    }

    @Test func aTakenSubdomainAtSignupIsEXISTS() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try Self.signupServer(dir.path + "/data", ["TENANT_SIGNUPS_PER_MINUTE": "100"])
        let client = try server.client()
        #expect(try client.call("TENANT", "SIGNUP", "Acme", "acme", "alice").fields?["tenant_id"] != nil)
        let taken = try client.call("TENANT", "SIGNUP", "Acme again", "acme", "bob")
        #expect(taken.errorCode == "EXISTS", "\(taken)")
        // Another tenant's id as a subdomain: the same words, so a signup learns nothing of ids.
        let id = try #require(try server.operatorClient().call("TENANT", "GET", "acme").fields?["tenant_id"]?.string)
        let byID = try client.call("TENANT", "SIGNUP", "Id", id, "carol")
        #expect(byID.errorText == "EXISTS subdomain '\(id)' is already taken", "\(byID)")
        #expect(server.stop() == 0)
    }

    @Test func signupHasAServerWideRateAndEveryCreationACap() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var server = try Self.signupServer(
            dir.path + "/rate",
            ["TENANT_SIGNUPS_PER_MINUTE": "100", "TENANT_SIGNUPS_PER_MINUTE_TOTAL": "3"]
        )
        for index in 1...3 {
            #expect(try server.client().call("TENANT", "SIGNUP", "T\(index)", "team-\(index)", "o").errorCode == nil)
        }
        let refused = try server.client().call("TENANT", "SIGNUP", "T4", "team-4", "o")
        #expect(refused.errorText?.hasPrefix("QUOTA signups_per_minute_total 3/3 retry_after=") == true, "\(refused)")
        #expect(server.stop() == 0)

        server = try Self.signupServer(
            dir.path + "/cap",
            ["TENANT_SIGNUPS_PER_MINUTE": "100", "TENANT_MAX_TENANTS": "2"]
        )
        #expect(try server.client().call("TENANT", "SIGNUP", "One", "one", "o").errorCode == nil)
        let admin = try server.operatorClient()
        #expect(try admin.call("TENANT", "CREATE", "Two", "two").errorCode == nil)
        #expect(try admin.call("TENANT", "CREATE", "Three", "three").errorText == "QUOTA tenants 2/2")
        #expect(try server.client().call("TENANT", "SIGNUP", "Four", "four", "o").errorText == "QUOTA tenants 2/2")
        #expect(try admin.call("TENANT", "LIST").elements?.count == 2)
        #expect(server.stop() == 0)
    }

    @Test(arguments: [
        ("2001:db8:1:2:a::1", "2001:db8:1:2:ffff:ffff:ffff:9", true),
        ("2001:db8:1:2::1", "2001:db8:1:3::1", false),
        ("::ffff:192.0.2.7", "192.0.2.7", true),
        ("192.0.2.7", "192.0.2.8", false),
    ])
    func rateLimitsCountAnIPv6Slash64AsOneAddress(first: String, second: String, same: Bool) {
        #expect((ClientAddress.rateKey(first) == ClientAddress.rateKey(second)) == same)
    }

    @Test func signupsFromOneIPv6Slash64ShareOneLimit() async throws {
        try await TemporaryDirectory.with { dir in
            let registry = try await EngineFixtures.registry(dir.path, fsync: .everysec, defaultPlan: nil) {
                $0.selfSignup = true
                $0.signupsPerMinute = 1
            }
            _ = try await registry.signup(name: "A", subdomain: "aaa", owner: "o", clientAddress: "2001:db8::1")
            await #expect(throws: TenantError.self) {
                _ = try await registry.signup(name: "B", subdomain: "bbb", owner: "o", clientAddress: "2001:db8::2:1")
            }
            // Another /64 has its own limit.
            _ = try await registry.signup(name: "C", subdomain: "ccc", owner: "o", clientAddress: "2001:db8:0:1::1")
            await registry.shutdown()
        }
    }

    @Test func failedAuthSlowsDownThenDisconnectsAndIsLogged() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        let guesser = try server.client()
        var durations: [Double] = []
        for attempt in 1...8 {
            let started = Date()
            let reply = try guesser.call("AUTH", "admin", "guess-\(attempt)")
            durations.append(Date().timeIntervalSince(started))
            #expect(reply.errorCode == "WRONGPASS")
        }
        #expect(guesser.isClosedByServer(), "the eighth failure on one connection closes it")
        // The server waits 0, 0, 50, 100, 200, 400, 800, 1600 ms: a mistyped token is not slowed.
        #expect(durations[0] + durations[1] < durations[4], "\(durations)")
        #expect(durations[4] >= 0.2, "the fifth failure waits: \(durations)")
        #expect(durations[7] >= 1.6, "the delay grows: \(durations)")
        // Other clients are served meanwhile, and the operator still gets in.
        #expect(try server.operatorClient().call("PING") == .simple("PONG"))
        #expect(server.stderrText().contains("AUTH failed"))
        #expect(server.stderrText().contains("address=127.0.0.1"))
        // Guesses spread over connections from one address are slowed too.
        var last = 0.0
        for attempt in 1...6 {
            let started = Date()
            #expect(try server.client().call("AUTH", "admin", "spread-\(attempt)").errorCode == "WRONGPASS")
            last = Date().timeIntervalSince(started)
        }
        #expect(last >= 0.2, "the 14th failure from one address waits: \(last) s")
        #expect(server.stop() == 0)
    }

    @Test func anOperatorTokenShorterThan32CharactersIsRefusedAtStart() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        do {
            _ = try TenantdProcess(dataDirectory: dir.path + "/env", environment: ["TENANT_ADMIN_TOKEN": "short"])
            Issue.record("tenantd started with a 5-character operator token")
        } catch TenantdProcessError.exited(let errors) {
            #expect(errors.contains("at least 32 characters"), "\(errors)")
        }
        let data = dir.path + "/file"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        try "letmein\n".write(toFile: data + "/admin.token", atomically: true, encoding: .utf8)
        do {
            _ = try TenantdProcess(dataDirectory: data)
            Issue.record("tenantd started with a 7-character admin.token")
        } catch TenantdProcessError.exited(let errors) {
            #expect(errors.contains("shorter than 32 characters"), "\(errors)")
        }
    }

    @Test(arguments: [
        ("TENANT_MAX_STORAGE_GB", "9000000000", "TENANT_MAX_STORAGE_GB must be at most"),
        ("TENANT_IDLE_SECONDS", "99999999999999", "TENANT_IDLE_SECONDS must be at most"),
        ("TENANTD_MAXCLIENTS", "99999999999999999999", "must be a non-negative integer"),
        ("TENANTD_CLIENT_OUTPUT_BUFFER_LIMIT_PUBSUB", "99999999999gb 1mb 60", "client-output-buffer-limit-pubsub"),
        ("TENANTD_PROTO_MAX_BULK_LEN", "9223372036854775807k", "proto-max-bulk-len"),
    ])
    func numbersFromTheEnvironmentThatWouldOverflowAreRefused(name: String, value: String, message: String) throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        do {
            _ = try TenantdProcess(dataDirectory: dir.path + "/data", environment: [name: value])
            Issue.record("tenantd started with \(name)=\(value)")
        } catch TenantdProcessError.exited(let errors) {
            #expect(errors.contains(message), "\(errors)")
            #expect(!errors.contains("Fatal error"), "\(errors)")
        }
    }

    @Test func clientNamesWithSpacesOrControlCharactersAreRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        let client = try server.client()
        #expect(try client.call("CLIENT", "SETNAME", "web-1") == .simple("OK"))
        for name in ["two words", "line\r\nbreak", "tab\there", String(repeating: "n", count: 257)] {
            #expect(try client.call("CLIENT", "SETNAME", name).errorCode == "ERR", "\(name)")
            #expect(try client.call("HELLO", "2", "SETNAME", name).errorCode == "ERR", "\(name)")
        }
        #expect(try client.call("CLIENT", "GETNAME") == .bulk(Array("web-1".utf8)))
        #expect(server.stop() == 0)
    }

    @Test func tenantUpdateNumbersOutOfRangeAreINVALID() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TenantdProcess(dataDirectory: dir.path + "/data")
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        for (field, value) in [
            ("max_storage_gb", "9000000000"), ("max_users", "1000000001"), ("max_messages_per_day", "-1"),
            ("max_storage_bytes", "9223372036854775808"), ("max_users", "1e9"),
        ] {
            #expect(
                try admin.call("TENANT", "UPDATE", acme.id, field, value).errorCode == "INVALID",
                "\(field) \(value)"
            )
        }
        let updated = try admin.call(
            "TENANT",
            "UPDATE",
            acme.id,
            "max_storage_gb",
            "8589934591",
            "max_users",
            "1000000000"
        )
        #expect(updated.fields?["max_users"]?.int == 1_000_000_000)
        #expect(try admin.call("PING") == .simple("PONG"))
        #expect(server.stop() == 0)
    }

    @Test func everythingTheServerWritesIsItsOwnUsersOnly() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        let server = try TenantdProcess(dataDirectory: data, environment: ["TENANT_CHECKPOINT_BYTES": "4096"])
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme", subdomain: "acme")
        let owner = try server.login("alice@acme", acme.token)
        _ = try owner.pipeline((0..<200).map { ["POST", "general", "message \($0) with some text to fill the log"] })
        let snapshots = dir.path + "/snapshots"
        try FileManager.default.createDirectory(atPath: snapshots, withIntermediateDirectories: true)
        #expect(try admin.call("TENANT", "SNAPSHOT", acme.id, snapshots).errorCode == nil)
        #expect(server.stop() == 0)
        var checked = 0
        for root in [data, snapshots + "/tenant_\(acme.id)"] {
            let enumerator = try #require(FileManager.default.enumerator(atPath: root))
            for case let relative as String in enumerator {
                var info = stat()
                #expect(lstat(root + "/" + relative, &info) == 0)
                let isDirectory = info.st_mode & S_IFMT == S_IFDIR
                #expect(
                    info.st_mode & 0o777 == (isDirectory ? 0o700 : 0o600),
                    "\(relative) is \(String(info.st_mode & 0o777, radix: 8))"
                )
                checked += 1
            }
        }
        #expect(checked > 8, "checked \(checked) entries")
    }
}

/// The AUTH throttle's arithmetic, on a clock the test moves.
@Suite("AUTH throttle")
struct AuthThrottleTests {
    @Test func failuresAFractionOfASecondApartStillDecay() {
        let throttle = AuthThrottle()
        var now = ContinuousClock.now
        var last = AuthThrottle.Decision(delay: .zero, disconnect: false)
        // One failure every 5.9 s is forgotten almost as fast as it comes (one per 6 s): it never
        // adds up to a delay, however long it goes on.
        for _ in 0..<200 {
            last = throttle.failed(address: "198.51.100.7", connectionFailures: 1, now: now)
            now = now.advanced(by: .milliseconds(5900))
        }
        #expect(last == AuthThrottle.Decision(delay: .zero, disconnect: false))
        // A burst does add up, and a pause forgets it.
        for _ in 0..<20 { last = throttle.failed(address: "198.51.100.7", connectionFailures: 1, now: now) }
        #expect(last.delay > .zero)
        now = now.advanced(by: .seconds(180))
        last = throttle.failed(address: "198.51.100.7", connectionFailures: 1, now: now)
        #expect(last.delay == .zero)
    }

    @Test func manyConnectionsFromOneAddressWaitTheirTurn() async throws {
        let throttle = AuthThrottle()
        // 40 failures of one address (40 connections), each to wait out a long delay: 16 wait
        // it out at once, the others wait for a slot; another address is not held up by them.
        let waits = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<40 {
                    group.addTask { await throttle.waitOut(.milliseconds(400), address: "198.51.100.9") }
                }
            }
        }
        var queued = 0
        for _ in 0..<200 where queued != 40 - FixedLimits.authFailureSlots {
            try await Task.sleep(for: .milliseconds(10))
            queued = throttle.waitingFailures
        }
        #expect(queued == 40 - FixedLimits.authFailureSlots)
        let other = Task { await throttle.waitOut(.milliseconds(1), address: "203.0.113.4") }
        await other.value
        #expect(throttle.waitingFailures <= 40 - FixedLimits.authFailureSlots)
        await waits.value
        #expect(throttle.waitingFailures == 0)
        // A right token never waits: no delay, no slot.
        await throttle.waitOut(.zero, address: "198.51.100.9")
    }

    @Test func anAddressFloodDoesNotGrowTheTableWithoutBound() {
        let throttle = AuthThrottle()
        let now = ContinuousClock.now
        for index in 0..<(FixedLimits.authMaxAddresses + 5000) {
            _ = throttle.failed(
                address: "10.\(index >> 16 & 255).\(index >> 8 & 255).\(index & 255)",
                connectionFailures: 1,
                now: now
            )
        }
        #expect(throttle.trackedAddresses <= FixedLimits.authMaxAddresses)
    }
}
