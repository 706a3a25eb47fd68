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

    func run() throws {
        let path =
            self.directory.count > 1 && self.directory.hasSuffix("/")
            ? String(self.directory.dropLast()) : self.directory
        guard POSIXFile.isDirectory(path) else { throw ValidationError("\(path) is not a directory") }
        let layout = DataLayout(root: path, prefix: self.prefix)
        if POSIXFile.isDirectory(layout.sharedLog.wal) {
            // The schema and shared strategies: one log for every tenant.
            let report = TenantVerifier.verifySharedLog(dataDirectory: path)
            if let problem = report.problem {
                print("BAD  \(report.path): \(problem)")
                throw ExitCode(1)
            }
            print(
                "OK   \(report.path): \(report.tenants) tenants, "
                    + (report.checkpointLSN > 0 ? "checkpoint at lsn \(report.checkpointLSN) + " : "")
                    + "\(report.records) records to lsn \(report.lastLSN), "
                    + "\(report.messages) messages in \(report.rooms) rooms, \(report.users) users"
            )
            if let torn = report.tornTail { print("     \(torn) — tenantd cuts it off when it starts") }
            return
        }
        let tenants: [String]
        if POSIXFile.isDirectory(TenantFiles(path).wal) {
            tenants = [path]
        } else {
            tenants = try POSIXFile.listDirectory(path).filter { layout.tenantID(ofDirectoryNamed: $0) != nil }
                .map { path + "/" + $0 }.filter { POSIXFile.isDirectory($0) }
            if tenants.isEmpty {
                throw ValidationError("\(path) holds no tenant directory (no wal/, no \(self.prefix)*)")
            }
        }
        var failed = 0
        for tenant in tenants {
            let report = TenantVerifier.verify(path: tenant)
            if let problem = report.problem {
                failed += 1
                print("BAD  \(tenant): \(problem)")
                continue
            }
            print(
                "OK   \(tenant): tenant \(report.tenantID ?? "?"), "
                    + (report.checkpointLSN > 0 ? "checkpoint at lsn \(report.checkpointLSN) + " : "")
                    + "\(report.records) records to lsn \(report.lastLSN), "
                    + "\(report.messages) messages in \(report.rooms) rooms, \(report.users) users"
            )
            if let torn = report.tornTail {
                print("     \(torn) — tenantd cuts it off (moving the bytes aside) when it opens the tenant")
            }
        }
        if failed > 0 { throw ExitCode(1) }
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

    func run() throws {
        let path =
            self.directory.count > 1 && self.directory.hasSuffix("/")
            ? String(self.directory.dropLast()) : self.directory
        guard POSIXFile.isDirectory(TenantFiles(path).wal) else {
            throw ValidationError("\(path) is not a tenant directory (no wal/)")
        }
        do {
            let report = try TenantRepair.repair(path: path)
            if report.actions.isEmpty {
                print("OK   \(path): nothing to repair (\(report.records) records to lsn \(report.lastLSN))")
            } else {
                print("REPAIRED \(path): now \(report.records) log records to lsn \(report.lastLSN)")
                for action in report.actions { print("     \(action)") }
            }
        } catch {
            print("FAILED \(path): \(error)")
            throw ExitCode(1)
        }
    }
}
