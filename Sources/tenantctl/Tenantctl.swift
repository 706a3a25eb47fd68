import ArgumentParser
import Foundation
import TenantEngine
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `tenantctl`: the operator's offline tool over tenant directories.
///
/// Exit codes scripts can trust: 0 success, 1 damage or a failed operation, 2 a usage error.
@main
struct Tenantctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenantctl",
        abstract: "Offline tools over tenantd data and tenant directories.",
        discussion: "Exit status: 0 success, 1 damage found or the operation failed, 2 a usage error.",
        subcommands: [
            Verify.self, Repair.self, Stats.self, Export.self, Import.self, Snapshot.self, Restore.self,
        ]
    )

    /// ArgumentParser's usage errors exit 64 (EX_USAGE); the contract says 2.
    static func main() async {
        var command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            Self.exit(usage: error, message: fullMessage(for: error))
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as ValidationError {
            Self.exit(usage: error, message: "tenantctl: \(error.message)")
        } catch {
            exit(withError: error)
        }
    }

    /// Usage errors exit 2; help (a clean exit) exits 0 as ArgumentParser has it.
    private static func exit(usage error: any Error, message: String) -> Never {
        guard exitCode(for: error) == .validationFailure else { exit(withError: error) }
        FileHandle.standardError.write(Data((message + "\n").utf8))
        Foundation.exit(2)
    }
}

/// `tenantctl verify DIR`: checks every record of a tenant directory, or of every tenant of a data directory.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every record; exit 1 naming the first bad file and offset. Changes nothing.",
        discussion: """
            DIR is a tenant directory (holding wal/) or a data directory (holding tenant directories). \
            A torn tail (an interrupted last append) is reported; tenantd cuts it off when it opens the tenant.
            """
    )

    @Argument(help: "A tenant directory or a data directory.")
    var directory: String

    @Option(help: "The prefix of tenant directory names in a data directory.")
    var prefix = "tenant_"

    @Flag(help: "One JSON document on standard output.")
    var json = false

    func run() throws {
        let path = trimmedPath(self.directory)
        guard POSIXFile.isDirectory(path) else { throw ValidationError("\(path) is not a directory") }
        let layout = DataLayout(root: path, prefix: self.prefix)
        var reports: [TenantVerification] = []
        let shared = POSIXFile.isDirectory(layout.sharedLog.wal)
        if shared {
            // The schema and shared strategies: one log for every tenant.
            reports = [TenantVerifier.verifySharedLog(dataDirectory: path)]
        } else {
            let tenants: [String]
            if POSIXFile.isDirectory(TenantFiles(path).wal) {
                tenants = [path]
            } else {
                tenants = try POSIXFile.listDirectory(path).filter { layout.tenantID(ofDirectoryNamed: $0) != nil }
                    .sorted().map { path + "/" + $0 }.filter { POSIXFile.isDirectory($0) }
                if tenants.isEmpty {
                    throw ValidationError("\(path) holds no tenant directory (no wal/, no \(self.prefix)*)")
                }
            }
            reports = tenants.map { TenantVerifier.verify(path: $0) }
        }
        let failed = reports.filter { $0.problem != nil }.count
        if self.json {
            Output.standard.line(
                JSONText.object([
                    ("ok", .bool(failed == 0)),
                    ("logs", .array(reports.map { .object(Self.fields($0, shared: shared)) })),
                ])
            )
        } else {
            for report in reports { self.print(report, shared: shared) }
        }
        Output.standard.flush()
        if failed > 0 { throw ExitCode(1) }
    }

    private static func fields(_ report: TenantVerification, shared: Bool) -> [(String, JSONText)] {
        var fields: [(String, JSONText)] = [
            ("path", .string(report.path)), ("ok", .bool(report.problem == nil)),
        ]
        if let problem = report.problem { fields.append(("problem", .string(problem))) }
        if shared {
            fields.append(("tenants", .int(Int64(report.tenants))))
        } else if let id = report.tenantID {
            fields.append(("tenant_id", .string(id)))
        }
        fields += [
            ("records", .int(Int64(report.records))), ("last_lsn", .int(Int64(report.lastLSN))),
            ("checkpoint_lsn", .int(Int64(report.checkpointLSN))), ("messages", .int(Int64(report.messages))),
            ("rooms", .int(Int64(report.rooms))), ("users", .int(Int64(report.users))),
        ]
        if let torn = report.tornTail { fields.append(("torn_tail", .string("\(torn)"))) }
        return fields
    }

    private func print(_ report: TenantVerification, shared: Bool) {
        if let problem = report.problem {
            Output.standard.line("BAD  \(report.path): \(problem)")
            return
        }
        let who = shared ? "\(report.tenants) tenants" : "tenant \(report.tenantID ?? "?")"
        Output.standard.line(
            "OK   \(report.path): \(who), "
                + (report.checkpointLSN > 0 ? "checkpoint at lsn \(report.checkpointLSN) + " : "")
                + "\(report.records) records to lsn \(report.lastLSN), "
                + "\(report.messages) messages in \(report.rooms) rooms, \(report.users) users"
        )
        if let torn = report.tornTail {
            let cut =
                shared
                ? "tenantd cuts it off when it starts"
                : "tenantd cuts it off (moving the bytes aside) when it opens the tenant"
            Output.standard.line("     \(torn) — \(cut)")
        }
    }
}

/// `tenantctl repair DIR`: keeps the valid prefix of a damaged tenant directory.
struct Repair: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Keep the valid prefix of a damaged tenant directory; say exactly what was dropped.",
        discussion: """
            Stop tenantd (or TENANT DETACH the tenant) first. The damaged segment is copied aside as \
            <segment>.broken and cut at the damage; later segments are moved aside as <segment>.broken. \
            Nothing is deleted. A note (REPAIRED.txt) stays in the directory and tenantd logs it on every open.
            """
    )

    @Argument(help: "A tenant directory (holding wal/).")
    var directory: String

    @Flag(help: "One JSON document on standard output.")
    var json = false

    func run() throws {
        let path = try requireTenantDirectory(self.directory)
        do {
            let report = try TenantRepair.repair(path: path)
            if self.json {
                Output.standard.line(
                    JSONText.object([
                        ("path", .string(path)), ("repaired", .bool(!report.actions.isEmpty)),
                        ("records", .int(Int64(report.records))), ("last_lsn", .int(Int64(report.lastLSN))),
                        ("actions", .array(report.actions.map { .string("\($0)") })),
                    ])
                )
            } else if report.actions.isEmpty {
                Output.standard.line(
                    "OK   \(path): nothing to repair (\(report.records) records to lsn \(report.lastLSN))"
                )
            } else {
                Output.standard.line("REPAIRED \(path): now \(report.records) log records to lsn \(report.lastLSN)")
                for action in report.actions { Output.standard.line("     \(action)") }
            }
            Output.standard.flush()
        } catch {
            if self.json {
                throw fail(describe(error), json: true)
            }
            Output.standard.line("FAILED \(path): \(error)")
            Output.standard.flush()
            throw ExitCode(1)
        }
    }
}
