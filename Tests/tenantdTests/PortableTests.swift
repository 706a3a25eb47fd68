import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 10, point 4: `tenantctl stats`, `export`, `import`, `snapshot` and `restore`, through the
/// real binaries: an export imported into an empty server serves the same rooms, seqs and texts;
/// bad input of every kind exits 1 and leaves nothing behind; usage errors exit 2.
@Suite("tenantctl: stats, export, import, snapshot, restore", .serialized)
struct PortableTests {
    /// Runs tenantctl, standard output and standard error apart.
    static func tenantctl(
        _ arguments: [String],
        input: String? = nil
    ) throws -> (
        status: Int32, output: String, errors: String
    ) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: OperationsTests.tenantctl)
        process.arguments = arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        let stdin = Pipe()
        process.standardInput = stdin
        // tenantctl may exit before it has read all of its input: a write then gets EPIPE, not SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        try process.run()
        if let input { try? stdin.fileHandleForWriting.write(contentsOf: Data(input.utf8)) }
        try? stdin.fileHandleForWriting.close()
        // Standard error is small; standard output may be large: read it first, then the rest.
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    /// A stopped server's data directory holding one tenant: corpus messages in several rooms,
    /// a second user, a setting, a changed limit.
    static func populatedTenant(in data: String) throws -> (id: String, token: String, rooms: [String: [String]]) {
        let server = try TenantdProcess(dataDirectory: data, environment: ["TENANT_DEFAULT_PLAN": "enterprise"])
        let admin = try server.operatorClient()
        let acme = try admin.createTenant(name: "Acme \"Chat\" 株式会社", subdomain: "acme", plan: "pro")
        #expect(
            try admin.call("TENANT", "UPDATE", acme.id, "settings.theme", "dark", "max_users", "42").errorCode == nil
        )
        let alice = try server.login("alice@acme", acme.token)
        #expect(try alice.call("USER", "ADD", "bob", "admin").string != nil)
        var rooms: [String: [String]] = [:]
        let corpus = try CheckpointTests.corpus().prefix(600)
        var pipeline: [[String]] = []
        for (room, text) in corpus {
            rooms[room, default: []].append(text)
            pipeline.append(["POST", room, text])
        }
        for reply in try alice.pipeline(pipeline) { #expect(reply.int != nil, "\(reply)") }
        #expect(server.stop() == 0)
        return (acme.id, acme.token, rooms)
    }

    @Test func anExportImportedIntoAnEmptyServerServesTheSameTenant() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (id, oldToken, rooms) = try Self.populatedTenant(in: dir.path + "/a")
        let tenantDirectory = dir.path + "/a/tenant_\(id)"

        // stats
        let stats = try Self.tenantctl(["stats", tenantDirectory, "--json"])
        #expect(stats.status == 0, "\(stats.errors)")
        let figures = try Self.json(stats.output)
        #expect(figures["tenant_id"] as? String == id)
        #expect(figures["messages"] as? Int == rooms.values.reduce(0) { $0 + $1.count })
        #expect(figures["rooms"] as? Int == rooms.count)
        #expect(figures["users"] as? Int == 2)
        let payload = rooms.values.joined().reduce(0) { $0 + $1.utf8.count }
        #expect(figures["payload_bytes"] as? Int == payload)
        let disk = try #require(figures["bytes_on_disk"] as? Int)
        #expect(abs((figures["compression_ratio"] as? Double ?? 0) - Double(payload) / Double(disk)) < 0.001)
        let text = try Self.tenantctl(["stats", tenantDirectory])
        #expect(text.status == 0 && text.output.contains("messages       \(figures["messages"]!)"), "\(text.output)")

        // export: one tenant line, the users, then every message in room and seq order; no secret.
        let export = try Self.tenantctl(["export", tenantDirectory])
        #expect(export.status == 0, "\(export.errors)")
        #expect(export.errors.isEmpty, "no progress bar when standard error is not a terminal")
        // On a terminal (script(1) gives it one), a progress bar to 100%.
        let onTerminal = try OperationsTests.run(
            "/usr/bin/script",
            ["-qec", "'\(OperationsTests.tenantctl)' export '\(tenantDirectory)' > /dev/null", "/dev/null"]
        )
        #expect(onTerminal.status == 0)
        #expect(onTerminal.output.contains("\r[") && onTerminal.output.contains("] 100.0% "), "\(onTerminal.output)")
        let lines = export.output.split(separator: "\n").map(String.init)
        let objects = try lines.map { try Self.json($0) }
        #expect(
            objects.map { $0["type"] as? String ?? "" } == ["tenant", "user", "user"]
                + Array(repeating: "message", count: lines.count - 3)
        )
        let tenant = objects[0]
        #expect(tenant["tenant_id"] as? String == id && tenant["name"] as? String == "Acme \"Chat\" 株式会社")
        #expect(tenant["plan"] as? String == "pro" && tenant["max_users"] as? Int == 42)
        #expect((tenant["settings"] as? [String: String]) == ["theme": "dark"])
        for key in [
            "subdomain", "max_storage_bytes", "max_messages_per_day", "is_active", "is_suspended", "created_at",
            "updated_at",
        ] {
            #expect(tenant[key] != nil, "\(key)")
        }
        #expect(objects[1]["name"] as? String == "alice" && objects[1]["role"] as? String == "owner")
        #expect(objects[2]["name"] as? String == "bob" && objects[2]["role"] as? String == "admin")
        #expect(!export.output.contains(oldToken) && !export.output.contains("token"))
        let messages = objects.dropFirst(3)
        let exportedRooms = messages.map { $0["room"] as? String ?? "" }
        #expect(exportedRooms == exportedRooms.sorted())
        for room in rooms.keys {
            let mine = messages.filter { $0["room"] as? String == room }
            #expect(mine.map { $0["seq"] as? Int ?? 0 } == Array(1...mine.count))
            #expect(mine.map { $0["text"] as? String ?? "" } == rooms[room])
        }

        // import into an empty data directory; the users get new tokens.
        try FileManager.default.createDirectory(atPath: dir.path + "/b", withIntermediateDirectories: true)
        try export.output.write(toFile: dir.path + "/export.jsonl", atomically: true, encoding: .utf8)
        let imported = try Self.tenantctl(["import", dir.path + "/export.jsonl", dir.path + "/b", "--json"])
        #expect(imported.status == 0, "\(imported.errors)")
        let report = try Self.json(imported.output)
        #expect(report["tenant_id"] as? String == id)
        #expect(report["messages"] as? Int == messages.count)
        let tokens = try #require(report["users"] as? [[String: String]])
        #expect(tokens.map { $0["name"] } == ["alice", "bob"])
        let newToken = try #require(tokens[0]["token"])
        #expect(newToken != oldToken && newToken.count == 64)
        #expect(try Self.tenantctl(["verify", dir.path + "/b/tenant_\(id)"]).status == 0)

        let served = try TenantdProcess(dataDirectory: dir.path + "/b")
        defer { _ = served.stop() }
        #expect(try served.client().call("AUTH", "alice@acme", oldToken).errorCode == "WRONGPASS")
        let alice = try served.login("alice@acme", newToken)
        _ = try served.login("bob@acme", try #require(tokens[1]["token"]))
        for (room, texts) in rooms {
            let history = try EndToEndTests.allMessages(alice, room: room)
            #expect(history.map(\.seq) == (1...Int64(texts.count)).map { $0 }, "\(room)")
            #expect(history.map(\.text) == texts, "\(room)")
        }
        let original = try #require(
            try alice.call("HISTORY", rooms.keys.sorted()[0], "LIMIT", "1").elements?.first?.elements
        )
        let exportedFirst = messages.filter { $0["room"] as? String == rooms.keys.sorted()[0] }.last!
        #expect(original[1].int == Int64(exportedFirst["ts"] as? Int ?? 0))
        let got = try #require(try served.operatorClient().call("TENANT", "GET", id).fields)
        #expect(got["max_users"]?.int == 42 && got["plan"]?.string == "pro" && got["subdomain"]?.string == "acme")
        #expect(got["created_at"]?.int == Int64(tenant["created_at"] as? Int ?? 0))
        // The next message goes on after the imported ones.
        let room = rooms.keys.sorted()[0]
        #expect(try alice.call("POST", room, "after the import") == .integer(Int64(rooms[room]!.count + 1)))
    }

    @Test func importRefusesBadExportsAndLeavesNothingBehind() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let data = dir.path + "/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        let tenantLine =
            #"{"type":"tenant","tenant_id":"t1","name":"T","subdomain":"tee","plan":"free","max_users":10,"#
            + #""max_storage_bytes":0,"max_messages_per_day":0,"is_active":true,"is_suspended":false,"#
            + #""created_at":1,"updated_at":2,"settings":{}}"#
        func message(_ room: String, _ seq: Any) -> String {
            #"{"type":"message","room":"\#(room)","seq":\#(seq),"ts":5,"user":"alice","text":"hi"}"#
        }
        let user = #"{"type":"user","name":"alice","role":"owner","joined_at":1}"#
        let bad: [(String, String)] = [
            ("a gap in seqs", [tenantLine, message("r", 1), message("r", 3)].joined(separator: "\n")),
            ("a room again", [tenantLine, message("a", 1), message("b", 1), message("a", 2)].joined(separator: "\n")),
            ("seq 0", [tenantLine, message("r", 0)].joined(separator: "\n")),
            ("a fractional seq", [tenantLine, message("r", 1.5)].joined(separator: "\n")),
            ("a string seq", [tenantLine, message("r", "\"1\"")].joined(separator: "\n")),
            ("a room with ..", [tenantLine, message("a..b", 1)].joined(separator: "\n")),
            ("a user after messages", [tenantLine, message("r", 1), user].joined(separator: "\n")),
            ("a user twice", [tenantLine, user, user].joined(separator: "\n")),
            (
                "a bad role",
                [tenantLine, #"{"type":"user","name":"x","role":"god","joined_at":1}"#].joined(separator: "\n")
            ),
            ("no tenant line", message("r", 1)),
            ("two tenant lines", [tenantLine, tenantLine].joined(separator: "\n")),
            ("not JSON", [tenantLine, "{not json"].joined(separator: "\n")),
            ("an unknown type", [tenantLine, #"{"type":"secret"}"#].joined(separator: "\n")),
            (
                "a path as the id",
                tenantLine.replacingOccurrences(of: #""tenant_id":"t1""#, with: #""tenant_id":"../x""#)
            ),
            (
                "a reserved subdomain",
                tenantLine.replacingOccurrences(of: #""subdomain":"tee""#, with: #""subdomain":"admin""#)
            ),
            ("a negative limit", tenantLine.replacingOccurrences(of: #""max_users":10"#, with: #""max_users":-1"#)),
            ("an empty file", ""),
            (
                "a text over the limit",
                [
                    tenantLine,
                    message("r", 1).replacingOccurrences(
                        of: #""text":"hi""#,
                        with: "\"text\":\"\(String(repeating: "x", count: 65_537))\""
                    ),
                ].joined(separator: "\n")
            ),
            (
                "a message from the future",
                [tenantLine, message("r", 1).replacingOccurrences(of: #""ts":5"#, with: #""ts":99999999999999"#)]
                    .joined(separator: "\n")
            ),
            (
                "a negative ts",
                [tenantLine, message("r", 1).replacingOccurrences(of: #""ts":5"#, with: #""ts":-1"#)].joined(
                    separator: "\n"
                )
            ),
            (
                "an author that is no user name",
                [tenantLine, message("r", 1).replacingOccurrences(of: #""user":"alice""#, with: #""user":"a\nb""#)]
                    .joined(separator: "\n")
            ),
            (
                "a limit over the server's",
                tenantLine.replacingOccurrences(of: #""max_users":10"#, with: #""max_users":1000000001"#)
            ),
            (
                "a bad backup setting",
                tenantLine.replacingOccurrences(of: #""settings":{}"#, with: #""settings":{"backup_interval":"0"}"#)
            ),
            (
                "a setting over 4096 bytes",
                tenantLine.replacingOccurrences(
                    of: #""settings":{}"#,
                    with: "\"settings\":{\"k\":\"\(String(repeating: "v", count: 4097))\"}"
                )
            ),
            ("a line over the bound", tenantLine + "\n" + String(repeating: " ", count: 17 << 20) + "x"),
        ]
        for (what, input) in bad {
            let result = try Self.tenantctl(["import", "-", data], input: input)
            #expect(result.status == 1, "\(what): \(result.status) \(result.errors)")
            #expect(!result.errors.isEmpty, "\(what)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: data).isEmpty, "\(what) left files behind")
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["data"], "\(what)")
        }
        // A good one, then the same again: the tenant is there already.
        let good = [tenantLine, user, message("r", 1), message("r", 2)].joined(separator: "\n") + "\n"
        let first = try Self.tenantctl(["import", "-", data], input: good)
        #expect(first.status == 0, "\(first.errors)")
        #expect(first.output.contains("IMPORTED t1") && first.output.contains("alice (owner) "))
        let again = try Self.tenantctl(["import", "-", data], input: good)
        #expect(again.status == 1 && again.errors.contains("exists"), "\(again.errors)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: data) == ["tenant_t1"])
        // Usage errors exit 2.
        #expect(try Self.tenantctl(["import", "-"]).status == 2)
        #expect(try Self.tenantctl(["import", "-", dir.path + "/missing"]).status == 2)
        #expect(try Self.tenantctl(["import", dir.path + "/missing.jsonl", data]).status == 2)
        #expect(try Self.tenantctl(["stats", data]).status == 2)
        #expect(try Self.tenantctl(["export"]).status == 2)
        #expect(try Self.tenantctl(["nosuch"]).status == 2)
        #expect(try Self.tenantctl(["stats", data + "/tenant_t1", "--bogus"]).status == 2)
    }

    @Test func snapshotAndRestoreOfflineThenAttach() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (id, token, rooms) = try Self.populatedTenant(in: dir.path + "/a")
        let source = dir.path + "/a/tenant_\(id)"
        try FileManager.default.createDirectory(atPath: dir.path + "/snaps", withIntermediateDirectories: true)
        let snapshot = try Self.tenantctl(["snapshot", source, dir.path + "/snaps", "--json"])
        #expect(snapshot.status == 0, "\(snapshot.errors)")
        let copy = try Self.json(snapshot.output)
        #expect(copy["path"] as? String == dir.path + "/snaps/tenant_\(id)")
        #expect(copy["messages"] as? Int == rooms.values.reduce(0) { $0 + $1.count })
        #expect(try Self.tenantctl(["snapshot", source, dir.path + "/snaps"]).status == 1, "exists")

        // Restored into a running server's data directory, then attached.
        let server = try TenantdProcess(dataDirectory: dir.path + "/b")
        defer { _ = server.stop() }
        let restored = try Self.tenantctl(["restore", dir.path + "/snaps/tenant_\(id)", dir.path + "/b", "--json"])
        #expect(restored.status == 0, "\(restored.errors)")
        #expect(try Self.json(restored.output)["path"] as? String == dir.path + "/b/tenant_\(id)")
        #expect(try Self.tenantctl(["restore", dir.path + "/snaps/tenant_\(id)", dir.path + "/b"]).status == 1)
        #expect(try server.operatorClient().call("TENANT", "ATTACH", id).fields?["tenant_id"]?.string == id)
        let alice = try server.login("alice@acme", token)
        for (room, texts) in rooms { #expect(try EndToEndTests.allMessages(alice, room: room).map(\.text) == texts) }

        // A damaged snapshot is refused by every command, and nothing is placed.
        let damaged = dir.path + "/snaps/tenant_\(id)"
        // The clean stop checkpointed: the checkpoint file holds the messages.
        let files = try #require(FileManager.default.enumerator(atPath: damaged)?.allObjects as? [String])
        let largest = try #require(
            try files.max {
                let sizes = try [$0, $1].map {
                    try FileManager.default.attributesOfItem(atPath: damaged + "/" + $0)[.size] as? Int ?? 0
                }
                return sizes[0] < sizes[1]
            }
        )
        let handle = try #require(FileHandle(forUpdatingAtPath: damaged + "/" + largest))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2)
        let middle = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: size / 2)
        handle.write(Data([middle[0] ^ 0xFF]))
        try handle.close()
        try FileManager.default.createDirectory(atPath: dir.path + "/c", withIntermediateDirectories: true)
        let refused = try Self.tenantctl(["restore", damaged, dir.path + "/c"])
        #expect(refused.status == 1 && refused.errors.contains("damaged"), "\(refused.errors)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path + "/c").isEmpty)
        #expect(try Self.tenantctl(["stats", damaged]).status == 1)
        #expect(try Self.tenantctl(["export", damaged]).status == 1)
        #expect(try Self.tenantctl(["snapshot", damaged, dir.path + "/c"]).status == 1)
        // verify and repair speak JSON too: the damage named, the exit status 1.
        let verified = try Self.tenantctl(["verify", damaged, "--json"])
        #expect(verified.status == 1)
        let report = try Self.json(verified.output)
        #expect(report["ok"] as? Bool == false)
        let logs = try #require(report["logs"] as? [[String: Any]])
        #expect(logs.count == 1 && (logs[0]["problem"] as? String)?.contains("checksum mismatch") == true)
        let healthy = try Self.tenantctl(["verify", dir.path + "/b", "--json"])
        #expect(healthy.status == 0)
        let healthyLogs = try #require(try Self.json(healthy.output)["logs"] as? [[String: Any]])
        #expect(healthyLogs.map { $0["tenant_id"] as? String } == [id])
        #expect(healthyLogs.first?["messages"] as? Int == rooms.values.reduce(0) { $0 + $1.count })
        let repairedAlready = try Self.tenantctl(["repair", dir.path + "/b/tenant_\(id)", "--json"])
        #expect(repairedAlready.status == 0)
        let repairReport = try Self.json(repairedAlready.output)
        #expect(repairReport["repaired"] as? Bool == false)
        let json = try Self.tenantctl(["stats", damaged, "--json"])
        #expect(json.status == 1)
        let error = try Self.json(json.output)["error"] as? String
        #expect(error?.contains("checksum mismatch") == true, "\(json.output)")
    }
}
