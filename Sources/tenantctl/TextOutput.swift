import ArgumentParser
import Foundation
import TenantEngine
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Buffered standard output (an export of millions of lines is not a write per line).
final class Output: @unchecked Sendable {
    static let standard = Output()
    private var buffer: [UInt8] = []

    func line(_ text: String) {
        self.buffer.append(contentsOf: text.utf8)
        self.buffer.append(0x0A)
        if self.buffer.count >= TenantctlLimits.outputBuffer { self.flush() }
    }

    func flush() {
        var offset = 0
        while offset < self.buffer.count {
            let written = self.buffer[offset...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                exit(1)  // a closed pipe or a full disk: the export is not whole
            }
            offset += written
        }
        self.buffer.removeAll(keepingCapacity: true)
    }
}

/// A progress bar on standard error, drawn only when it is a terminal.
struct ProgressBar {
    let total: Int
    let unit: String
    private let enabled = isatty(2) == 1
    private var lastDrawn = -1
    private var drawn = false

    init(total: Int, unit: String) {
        self.total = total
        self.unit = unit
    }

    mutating func update(_ done: Int) {
        guard self.enabled, self.total > 0 else { return }
        let permille = min(1000, done * 1000 / self.total)
        guard permille != self.lastDrawn else { return }
        self.lastDrawn = permille
        self.drawn = true
        let width = TenantctlLimits.progressWidth
        let filled = permille * width / 1000
        let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
        let text = "\r[\(bar)] \(permille / 10).\(permille % 10)% \(done)/\(self.total) \(self.unit)"
        FileHandle.standardError.write(Data(text.utf8))
    }

    mutating func finish() {
        guard self.drawn else { return }
        FileHandle.standardError.write(Data("\n".utf8))
        self.drawn = false
    }
}

/// The JSON tenantctl writes: objects with keys in a fixed order, strings escaped as RFC 8259 says.
indirect enum JSONText {
    case string(String)
    case int(Int64)
    case double(Double)
    case bool(Bool)
    case array([JSONText])
    case object([(String, JSONText)])

    static func object(_ fields: [(String, JSONText)]) -> String {
        var text = ""
        JSONText.object(fields).write(into: &text)
        return text
    }

    /// The export's tenant line: the type, then every Tenant field.
    static func tenantLine(_ metadata: TenantMetadata) -> String {
        object([
            ("type", .string("tenant")), ("tenant_id", .string(metadata.tenantID)), ("name", .string(metadata.name)),
            ("subdomain", .string(metadata.subdomain)), ("plan", .string(metadata.plan.rawValue)),
            ("max_users", .int(metadata.maxUsers)), ("max_storage_bytes", .int(metadata.maxStorageBytes)),
            ("max_messages_per_day", .int(metadata.maxMessagesPerDay)), ("is_active", .bool(metadata.isActive)),
            ("is_suspended", .bool(metadata.isSuspended)), ("created_at", .int(metadata.createdAt)),
            ("updated_at", .int(metadata.updatedAt)),
            ("settings", .object(metadata.settings.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
        ])
    }

    func write(into text: inout String) {
        switch self {
        case .string(let value): Self.escape(value, into: &text)
        case .int(let value): text += String(value)
        case .double(let value): text += value.isFinite ? "\(value)" : "null"
        case .bool(let value): text += value ? "true" : "false"
        case .array(let values):
            text += "["
            for (index, value) in values.enumerated() {
                if index > 0 { text += "," }
                value.write(into: &text)
            }
            text += "]"
        case .object(let fields):
            text += "{"
            for (index, (key, value)) in fields.enumerated() {
                if index > 0 { text += "," }
                Self.escape(key, into: &text)
                text += ":"
                value.write(into: &text)
            }
            text += "}"
        }
    }

    static func escape(_ value: String, into text: inout String) {
        JSONString.append(value, to: &text)
    }
}

/// Lines of a file, each at most `maxLength` bytes: a longer one is an error, not a read of
/// gigabytes into memory.
struct LineReader {
    let file: UnsafeMutablePointer<FILE>
    let maxLength: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var atEnd = false
    /// Bytes handed out so far, newlines included.
    private(set) var consumed = 0

    init(file: UnsafeMutablePointer<FILE>, maxLength: Int) {
        self.file = file
        self.maxLength = maxLength
    }

    /// The next line, without its newline; nil at the end.
    mutating func next() throws -> [UInt8]? {
        var scanned = self.start
        while true {
            if let newline = self.buffer[scanned...].firstIndex(of: 0x0A) {
                let line = Array(self.buffer[self.start..<newline])
                self.consumed += newline + 1 - self.start
                self.start = newline + 1
                return line
            }
            scanned = self.buffer.count
            guard self.buffer.count - self.start <= self.maxLength else {
                throw LineTooLong(limit: self.maxLength)
            }
            if self.atEnd {
                guard self.start < self.buffer.count else { return nil }
                let line = Array(self.buffer[self.start...])
                self.consumed += line.count
                self.start = self.buffer.count
                return line
            }
            if self.start > 0 {
                self.buffer.removeFirst(self.start)
                scanned -= self.start
                self.start = 0
            }
            var chunk = [UInt8](repeating: 0, count: TenantctlLimits.readChunk)
            let got = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, self.file) }
            if got < chunk.count {
                if ferror(self.file) != 0 { throw ReadFailed(message: String(cString: strerror(errno))) }
                self.atEnd = true
            }
            self.buffer += chunk[0..<got]
        }
    }

    struct LineTooLong: Error, CustomStringConvertible {
        let limit: Int
        var description: String { "a line is over \(limit) bytes" }
    }

    struct ReadFailed: Error, CustomStringConvertible {
        let message: String
        var description: String { "read error: \(message)" }
    }
}
