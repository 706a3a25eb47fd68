import ArgumentParser
import Foundation
import TenantEngine
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Trims one trailing slash.
func trimmedPath(_ path: String) -> String {
    path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
}

/// `path` without a trailing slash, once it is known to be a tenant directory (holding wal/).
func requireTenantDirectory(_ path: String) throws -> String {
    let path = trimmedPath(path)
    guard POSIXFile.isDirectory(TenantFiles(path).wal) else {
        throw ValidationError("\(path) is not a tenant directory (no wal/)")
    }
    return path
}

/// An error as the operator reads it: a ``TenantError``'s message, without its kind.
func describe(_ error: any Error) -> String {
    (error as? TenantError)?.message ?? "\(error)"
}

/// Prints a failure the way every subcommand does: text on standard error, or one JSON document
/// on standard output under `--json`; then exit 1.
func fail(_ message: String, json: Bool) -> ExitCode {
    if json {
        Output.standard.line(JSONText.object([("error", .string(message))]))
        Output.standard.flush()
    } else {
        FileHandle.standardError.write(Data("tenantctl: \(message)\n".utf8))
    }
    return ExitCode(1)
}

/// `tenantctl stats DIR [--json]`.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A tenant directory's figures: rooms, messages, users, bytes on disk, payload bytes, compression.",
        discussion: """
            Payload bytes are the messages' texts as stored, uncompressed; the compression ratio is \
            payload bytes over bytes on disk (checkpoint and log together). Reads without changing a \
            byte; for a tenant a server is serving, take a TENANT SNAPSHOT and read that.
            """
    )

    @Argument(help: "A tenant directory (holding wal/).")
    var directory: String

    @Flag(help: "One JSON document on standard output.")
    var json = false

    func run() throws {
        let path = try requireTenantDirectory(self.directory)
        let tenant: OfflineTenant
        let payload: Int64
        let disk: Int64
        do {
            tenant = try OfflineTenant.read(path: path)
            payload = try tenant.textBytes()
            disk = try POSIXFileSystem().treeSize(path)
        } catch {
            throw fail(describe(error), json: self.json)
        }
        let ratio = disk > 0 ? Double(payload) / Double(disk) : 0
        let metadata = tenant.metadata
        if self.json {
            Output.standard.line(
                JSONText.object([
                    ("tenant_id", .string(metadata.tenantID)), ("name", .string(metadata.name)),
                    ("subdomain", .string(metadata.subdomain)), ("plan", .string(metadata.plan.rawValue)),
                    ("rooms", .int(Int64(tenant.roomNames.count))), ("messages", .int(Int64(tenant.messageCount))),
                    ("users", .int(Int64(tenant.users.count))), ("bytes_on_disk", .int(disk)),
                    ("payload_bytes", .int(payload)), ("compression_ratio", .double((ratio * 1000).rounded() / 1000)),
                    ("last_lsn", .int(Int64(tenant.lastLSN))),
                ])
            )
        } else {
            let lines = [
                (
                    "tenant",
                    "\(metadata.tenantID) (\(metadata.name), subdomain \(metadata.subdomain), plan \(metadata.plan.rawValue))"
                ),
                ("rooms", "\(tenant.roomNames.count)"),
                ("messages", "\(tenant.messageCount)"),
                ("users", "\(tenant.users.count)"),
                ("bytes on disk", "\(disk)"),
                ("payload bytes", "\(payload)"),
                ("compression", String(format: "%.2fx", ratio)),
                ("last lsn", "\(tenant.lastLSN)"),
            ]
            for (key, value) in lines {
                Output.standard.line(key.padding(toLength: 15, withPad: " ", startingAt: 0) + value)
            }
        }
        Output.standard.flush()
    }
}

/// `tenantctl export DIR`: the portable form, JSON lines on standard output.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a tenant as JSON lines: one tenant line, its users (never a token), its messages.",
        discussion: """
            Each line has a type: "tenant" (every Tenant field), then "user" (name, role, joined_at), \
            then "message" (room, seq, ts, user, text) in room and seq order. `tenantctl import` reads it. \
            Reads without changing a byte; for a tenant a server is serving, export a TENANT SNAPSHOT.
            """
    )

    @Argument(help: "A tenant directory (holding wal/).")
    var directory: String

    func run() throws {
        let path = try requireTenantDirectory(self.directory)
        let output = Output.standard
        do {
            let tenant = try OfflineTenant.read(path: path)
            output.line(JSONText.tenantLine(tenant.metadata))
            for user in tenant.users {
                output.line(
                    JSONText.object([
                        ("type", .string("user")), ("name", .string(user.name)),
                        ("role", .string(user.role.rawValue)), ("joined_at", .int(user.joinedAt)),
                    ])
                )
            }
            var progress = ProgressBar(total: tenant.messageCount, unit: "messages")
            var done = 0
            for room in tenant.roomNames {
                // A room at a time, in pieces: a room of millions is not copied out whole.
                let count = tenant.count(in: room)
                var first = 1
                while first <= count {
                    let last = min(count, first + 9_999)
                    for message in try tenant.messages(in: room, seqs: first...last) {
                        output.line(
                            JSONText.object([
                                ("type", .string("message")), ("room", .string(room)),
                                ("seq", .int(Int64(message.seq))), ("ts", .int(message.timestamp)),
                                ("user", .string(message.user)), ("text", .string(message.text)),
                            ])
                        )
                    }
                    done += last - first + 1
                    progress.update(done)
                    first = last + 1
                }
            }
            progress.finish()
            output.flush()
        } catch {
            output.flush()
            throw fail(describe(error), json: false)
        }
    }
}

/// `tenantctl import FILE DATA-DIR`.
struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a tenant's directory in DATA-DIR from an export; its users get new tokens, printed once.",
        discussion: """
            FILE is an export (JSON lines; - reads standard input). The tenant keeps its id, rooms, seqs, \
            messages and settings. The directory appears only once complete; then start tenantd on \
            DATA-DIR, or TENANT ATTACH <id> on a server already running there.
            """
    )

    @Argument(help: "The export file, or - for standard input.")
    var file: String

    @Argument(help: "The data directory to put the tenant in.")
    var dataDirectory: String

    @Option(help: "The prefix of tenant directory names (TENANT_DATABASE_PREFIX).")
    var prefix = "tenant_"

    @Option(help: "The longest message text, in bytes, as the server's TENANT_MAX_MESSAGE_BYTES.")
    var maxMessageBytes = TenantctlLimits.defaultMaxMessageBytes

    @Flag(help: "One JSON document on standard output.")
    var json = false

    /// The longest line read (``TenantctlLimits/maxLineBytes(maxMessageBytes:)``).
    var maxLineBytes: Int { TenantctlLimits.maxLineBytes(maxMessageBytes: self.maxMessageBytes) }

    func validate() throws {
        guard TenantctlLimits.messageBytes.contains(self.maxMessageBytes) else {
            throw ValidationError("--max-message-bytes must be 1-16777216")
        }
    }

    func run() async throws {
        let dataPath = trimmedPath(self.dataDirectory)
        guard POSIXFile.isDirectory(dataPath) else { throw ValidationError("\(dataPath) is not a directory") }
        guard let input = self.file == "-" ? fdopen(dup(0), "r") : fopen(self.file, "r") else {
            throw ValidationError("cannot open \(self.file): \(String(cString: strerror(errno)))")
        }
        defer { fclose(input) }
        let size = self.file == "-" ? 0 : ((try? POSIXFile.fileSize(self.file)) ?? 0)
        var progress = ProgressBar(total: size, unit: "bytes")
        var importer: TenantImport?
        var tokens: [(name: String, role: String, token: String)] = []
        var lineNumber = 0
        var bytesRead = 0
        do {
            var reader = LineReader(file: input, maxLength: self.maxLineBytes)
            while let line = try reader.next() {
                lineNumber += 1
                bytesRead = reader.consumed
                if line.allSatisfy({ $0 == 0x0D || $0 == 0x20 }) { continue }
                let data = Data(line)
                let type = try Self.decode(LineType.self, data, line: lineNumber).type
                switch type {
                case "tenant":
                    guard importer == nil else { throw ImportError(lineNumber, "a second tenant line") }
                    let metadata = try Self.decode(TenantMetadata.self, data, line: lineNumber)
                    importer = try TenantImport(
                        metadata: metadata,
                        dataDirectory: dataPath,
                        prefix: self.prefix,
                        maxMessageBytes: self.maxMessageBytes
                    )
                case "user":
                    guard let importer else { throw ImportError(lineNumber, "a user before the tenant line") }
                    let user = try Self.decode(UserLine.self, data, line: lineNumber)
                    guard let role = Role(wireValue: user.role) else {
                        throw ImportError(lineNumber, "role must be member, admin or owner")
                    }
                    guard importer.messages == 0 else { throw ImportError(lineNumber, "a user after the messages") }
                    let token = try importer.addUser(name: user.name, role: role, joinedAt: user.joinedAt)
                    tokens.append((user.name, role.rawValue, token))
                case "message":
                    guard let importer else { throw ImportError(lineNumber, "a message before the tenant line") }
                    let message = try Self.decode(MessageLine.self, data, line: lineNumber)
                    do {
                        try await importer.addMessage(
                            room: message.room,
                            seq: message.seq,
                            timestamp: message.ts,
                            user: message.user,
                            text: message.text
                        )
                    } catch let error as TenantError {
                        throw ImportError(lineNumber, error.message)
                    }
                default:
                    throw ImportError(lineNumber, "unknown line type '\(type.prefix(32))'")
                }
                progress.update(bytesRead)
            }
            guard let importer else { throw ImportError(lineNumber, "no tenant line") }
            let path = try await importer.finish()
            progress.finish()
            self.report(importer, path: path, tokens: tokens)
        } catch {
            progress.finish()
            await importer?.abandon()
            throw fail(describe(error), json: self.json)
        }
    }

    private func report(_ importer: TenantImport, path: String, tokens: [(name: String, role: String, token: String)]) {
        let id = importer.metadata.tenantID
        if self.json {
            Output.standard.line(
                JSONText.object([
                    ("tenant_id", .string(id)), ("path", .string(path)),
                    ("messages", .int(Int64(importer.messages))),
                    (
                        "users",
                        .array(
                            tokens.map {
                                .object([
                                    ("name", .string($0.name)), ("role", .string($0.role)),
                                    ("token", .string($0.token)),
                                ])
                            }
                        )
                    ),
                ])
            )
        } else {
            Output.standard.line("IMPORTED \(id) to \(path): \(importer.messages) messages, \(tokens.count) users")
            Output.standard.line("new tokens (shown once; the old ones do not work here):")
            for (name, role, token) in tokens { Output.standard.line("  \(name) (\(role)) \(token)") }
            Output.standard.line("serve it: start tenantd on this data directory, or TENANT ATTACH \(id)")
        }
        Output.standard.flush()
    }

    struct ImportError: Error, CustomStringConvertible {
        var description: String
        init(_ line: Int, _ message: String) { self.description = "line \(line): \(message)" }
    }

    private struct LineType: Decodable {
        var type: String
    }

    private struct UserLine: Decodable {
        var name: String
        var role: String
        var joinedAt: Int64

        enum CodingKeys: String, CodingKey {
            case name, role
            case joinedAt = "joined_at"
        }
    }

    private struct MessageLine: Decodable {
        var room: String
        var seq: UInt64
        var ts: Int64
        var user: String
        var text: String
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ data: Data, line: Int) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw ImportError(line, "no '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw ImportError(
                line,
                "'\(context.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type"
            )
        } catch let DecodingError.dataCorrupted(context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw ImportError(line, field.isEmpty ? "not a JSON object" : "'\(field)' has a wrong value")
        } catch {
            throw ImportError(line, "not a JSON object")
        }
    }
}

/// `tenantctl snapshot TENANT-DIR DEST-DIR`.
struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy an offline tenant directory into DEST-DIR, verified; refuses a damaged one.",
        discussion: """
            For a tenant a server is serving, use TENANT SNAPSHOT instead (a consistent copy while it \
            serves). The copy is DEST-DIR/<the directory's name>/; it is written under a .partial name \
            and renamed once every file is synced.
            """
    )

    @Argument(help: "A tenant directory (holding wal/), not being served.")
    var directory: String

    @Argument(help: "An existing directory to put the copy in.")
    var destination: String

    @Flag(help: "One JSON document on standard output.")
    var json = false

    func run() throws {
        let path = try requireTenantDirectory(self.directory)
        guard POSIXFile.isDirectory(self.destination) else {
            throw ValidationError("\(self.destination) is not a directory")
        }
        do {
            let (copy, verification) = try OfflineSnapshot.copy(tenantDirectory: path, into: self.destination)
            if let problem = verification.problem { throw TenantError.ioError("the copy does not verify: \(problem)") }
            if self.json {
                Output.standard.line(
                    JSONText.object([
                        ("path", .string(copy)), ("tenant_id", .string(verification.tenantID ?? "")),
                        ("lsn", .int(Int64(verification.lastLSN))),
                        ("messages", .int(Int64(verification.messages))),
                    ])
                )
            } else {
                Output.standard.line(
                    "SNAPSHOT \(copy): tenant \(verification.tenantID ?? "?"), lsn \(verification.lastLSN), "
                        + "\(verification.messages) messages"
                )
            }
            Output.standard.flush()
        } catch {
            throw fail(describe(error), json: self.json)
        }
    }
}

/// `tenantctl restore SNAPSHOT DATA-DIR`.
struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Put a snapshot into DATA-DIR as the tenant's directory, verified; then TENANT ATTACH it.",
        discussion: """
            The snapshot (from TENANT SNAPSHOT, tenantctl snapshot or a scheduled backup) is verified, \
            copied to DATA-DIR/<prefix><tenant id>/ under a .partial name and renamed once synced. A \
            tenant already there is not overwritten: TENANT DELETE or DETACH it first.
            """
    )

    @Argument(help: "A snapshot: a tenant directory.")
    var snapshot: String

    @Argument(help: "The data directory of the server that will serve it.")
    var dataDirectory: String

    @Option(help: "The prefix of tenant directory names (TENANT_DATABASE_PREFIX).")
    var prefix = "tenant_"

    @Flag(help: "One JSON document on standard output.")
    var json = false

    func run() throws {
        let path = try requireTenantDirectory(self.snapshot)
        guard POSIXFile.isDirectory(self.dataDirectory) else {
            throw ValidationError("\(self.dataDirectory) is not a directory")
        }
        do {
            let (id, target) = try OfflineSnapshot.restore(
                snapshot: path,
                dataDirectory: self.dataDirectory,
                prefix: self.prefix
            )
            if self.json {
                Output.standard.line(JSONText.object([("tenant_id", .string(id)), ("path", .string(target))]))
            } else {
                Output.standard.line("RESTORED \(id) to \(target)")
                Output.standard.line("serve it: TENANT ATTACH \(id) on the running server (or start tenantd)")
            }
            Output.standard.flush()
        } catch {
            throw fail(describe(error), json: self.json)
        }
    }
}
