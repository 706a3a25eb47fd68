import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real `tenantd` process on port 0 with its own data directory.
public final class TenantdProcess {
    /// The port it listens on.
    public private(set) var port: Int = 0
    /// Its data directory.
    public let dataDirectory: String
    private let process = Process()
    private let output = Pipe()
    private let errors: String

    /// The built `tenantd` next to the running test bundle.
    public static var binaryPath: String {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return executable.deletingLastPathComponent().appendingPathComponent("tenantd").path
    }

    /// Starts tenantd and waits for its ready line.
    /// - Parameters:
    ///   - dataDirectory: the data directory.
    ///   - arguments: more flags (`--fsync always`, …).
    ///   - environment: more environment variables.
    /// - Parameters:
    ///   - dataDirectory: the data directory.
    ///   - arguments: flags after `--port 0 --data-dir DIR`.
    ///   - environment: variables added to the test's own.
    ///   - openFilesLimit: a hard and soft `RLIMIT_NOFILE` to start under (`ulimit -n`), if any.
    public init(
        dataDirectory: String,
        arguments: [String] = [],
        environment: [String: String] = [:],
        openFilesLimit: Int? = nil
    ) throws {
        self.dataDirectory = dataDirectory
        self.errors = dataDirectory + ".\(UUID().uuidString).stderr.log"
        _ = FileManager.default.createFile(atPath: self.errors, contents: nil)
        // No metrics listener unless a test asks for one: parallel servers would share its port.
        let metrics = arguments.contains("--metrics-port") ? [] : ["--metrics-port", "0"]
        let flags = ["--port", "0", "--data-dir", dataDirectory] + metrics + arguments
        if let openFilesLimit {
            self.process.executableURL = URL(fileURLWithPath: "/bin/sh")
            self.process.arguments =
                ["-c", "ulimit -n \(openFilesLimit) && exec \"$0\" \"$@\"", Self.binaryPath] + flags
        } else {
            self.process.executableURL = URL(fileURLWithPath: Self.binaryPath)
            self.process.arguments = flags
        }
        var env = ProcessInfo.processInfo.environment
        for (key, value) in environment { env[key] = value }
        self.process.environment = env
        self.process.standardOutput = self.output
        self.process.standardError = FileHandle(forWritingAtPath: self.errors)
        try self.process.run()
        self.port = try self.waitForReady()
    }

    private func waitForReady() throws -> Int {
        var text = ""
        let handle = self.output.fileHandleForReading
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let data = handle.availableData
            if data.isEmpty {
                throw TenantdProcessError.exited(self.stderrText())
            }
            text += String(decoding: data, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("tenantd ready ") }),
                let portField = line.split(separator: " ").first(where: { $0.hasPrefix("port=") }),
                let port = Int(portField.dropFirst(5))
            {
                self.readyLine = String(line)
                return port
            }
        }
        throw TenantdProcessError.notReady(text)
    }

    /// The process id.
    public var pid: Int32 { self.process.processIdentifier }

    /// The ready line as printed.
    public private(set) var readyLine = ""

    /// The TLS listener's port from the ready line, if it has one.
    public var tlsPort: Int? {
        self.readyLine.split(separator: " ").first { $0.hasPrefix("tls_port=") }.flatMap { Int($0.dropFirst(9)) }
    }

    /// The resident memory of the process, in bytes (from /proc).
    public func residentBytes() -> Int { self.statusBytes("VmRSS:") }

    /// A size field of /proc/<pid>/status, in bytes (0 when it cannot be read).
    private func statusBytes(_ field: String) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(self.pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field) }),
            let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kilobytes * 1024
    }

    /// The most resident memory the process has had, in bytes (VmHWM, from /proc).
    public func peakResidentBytes() -> Int { self.statusBytes("VmHWM:") }

    /// What the process wrote to standard error.
    public func stderrText() -> String {
        (try? String(contentsOfFile: self.errors, encoding: .utf8)) ?? ""
    }

    /// The operator token from `<data>/admin.token`.
    public func adminToken() throws -> String {
        try String(contentsOfFile: self.dataDirectory + "/admin.token", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Sends a signal and waits for the process to exit.
    /// - Returns: its exit status (or the terminating signal).
    @discardableResult
    public func stop(signal: Int32 = SIGTERM) -> Int32 {
        if self.process.isRunning { kill(self.process.processIdentifier, signal) }
        self.process.waitUntilExit()
        return self.process.terminationStatus
    }

    /// How the process ended.
    public var terminationReason: Process.TerminationReason { self.process.terminationReason }

    /// A connected client.
    public func client() throws -> RESPTestClient {
        try RESPTestClient(port: self.port)
    }

    deinit {
        if self.process.isRunning {
            kill(self.process.processIdentifier, SIGKILL)
            self.process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: self.errors)
    }
}

/// Why tenantd did not start.
public enum TenantdProcessError: Error, CustomStringConvertible {
    case exited(String)
    case notReady(String)

    public var description: String {
        switch self {
        case .exited(let stderr): return "tenantd exited before it was ready: \(stderr)"
        case .notReady(let output): return "tenantd printed no ready line: \(output)"
        }
    }
}
