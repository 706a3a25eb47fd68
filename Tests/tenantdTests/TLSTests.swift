import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 11, point 1, through the real binary: the TLS listener's ready line, its certificate
/// checked at start, and TLS connections counted in `maxclients` from their accept, before any
/// handshake. (The stock clients over TLS, the server name's tenant and the reload on SIGHUP are in
/// Tests/stock-clients/test_tls.py.)
@Suite("TLS listener", .serialized)
struct TLSTests {
    static func certificate(in directory: String) throws {
        let made = try OperationsTests.run(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", directory + "/key.pem",
                "-out",
                directory + "/cert.pem", "-subj", "/CN=localhost",
            ]
        )
        #expect(made.status == 0, "\(made.output)")
    }

    @Test func theReadyLineNamesTheTLSPortAndABadCertificateStopsTheStart() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Self.certificate(in: dir.path)
        let flags = [
            "--tls-port", "0", "--tls-cert-file", dir.path + "/cert.pem", "--tls-key-file", dir.path + "/key.pem",
        ]
        let server = try TenantdProcess(dataDirectory: dir.path + "/data", arguments: flags)
        let tlsPort = try #require(server.tlsPort)
        #expect(tlsPort > 0 && tlsPort != server.port)
        #expect(server.readyLine.contains(" port=\(server.port) tls_port=\(tlsPort) data="), "\(server.readyLine)")
        #expect(server.stop() == 0)
        // Without TLS, no tls_port field.
        let plain = try TenantdProcess(dataDirectory: dir.path + "/plain")
        #expect(plain.tlsPort == nil && !plain.readyLine.contains("tls_port"))
        #expect(plain.stop() == 0)
        // A missing, unreadable or mismatched key, or a port without files: the server does not start.
        try "not a key".write(toFile: dir.path + "/bad.pem", atomically: true, encoding: .utf8)
        let other = dir.path + "/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        try Self.certificate(in: other)
        for bad in [
            ["--tls-port", "0", "--tls-cert-file", dir.path + "/cert.pem", "--tls-key-file", dir.path + "/bad.pem"],
            ["--tls-port", "0", "--tls-cert-file", dir.path + "/cert.pem", "--tls-key-file", other + "/key.pem"],
            ["--tls-port", "0", "--tls-cert-file", dir.path + "/missing.pem", "--tls-key-file", dir.path + "/key.pem"],
            ["--tls-port", "0"],
        ] {
            #expect(throws: (any Error).self, "\(bad)") {
                try TenantdProcess(dataDirectory: dir.path + "/data", arguments: bad)
            }
        }
    }

    /// A client that opens TLS connections and never shakes hands holds one of `maxclients` each:
    /// past it, both ports refuse.
    @Test func tlsConnectionsCountInMaxclientsBeforeTheirHandshake() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Self.certificate(in: dir.path)
        let server = try TenantdProcess(
            dataDirectory: dir.path + "/data",
            arguments: [
                "--tls-port", "0", "--tls-cert-file", dir.path + "/cert.pem", "--tls-key-file", dir.path + "/key.pem",
                "--maxclients", "3",
            ]
        )
        defer { _ = server.stop() }
        let tlsPort = try #require(server.tlsPort)
        // The operator's connection takes the first place and watches the count.
        let admin = try server.operatorClient()
        let silent = try (0..<2).map { _ in try RESPTestClient(port: tlsPort) }
        // Their accepts are asynchronous: a probe sent before them would take a place itself.
        try waitUntil("both TLS connections counted") {
            let info = try admin.call("INFO", "clients").string ?? ""
            return info.contains("connected_clients:3\r\n")
        }
        try waitUntil("the plain port refusing") {
            // A third connection, plain, is refused as Redis refuses.
            let probe = try RESPTestClient(port: server.port, timeout: 1)
            defer { probe.shutdown() }
            let reply = try? probe.read()
            return reply?.errorText?.contains("max number of clients reached") == true
        }
        // And a third TLS connection is closed without a handshake.
        let refused = try RESPTestClient(port: tlsPort, timeout: 5)
        #expect(refused.isClosedByServer())
        for client in silent { client.shutdown() }
        _ = admin
        // Once they are gone, clients get in again.
        try waitUntil("a place again") { (try? server.client().call("PING")) == .simple("PONG") }
    }
}
