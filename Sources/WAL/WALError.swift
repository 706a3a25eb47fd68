#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error of the write-ahead log.
public struct WALError: Error, Hashable, CustomStringConvertible, Sendable {
    private enum Code: Hashable, Sendable {
        case io(operation: String, path: String, errno: Int32)
        case shortage(operation: String, path: String, errno: Int32)
        case corrupt(file: String, offset: Int, reason: String)
        case recordTooLarge(Int, limit: Int)
        case closed
        case failed(String)
        case foreignFile(String)
    }

    private let code: Code

    private init(_ code: Code) {
        self.code = code
    }

    /// A system call failed.
    public static func io(_ operation: String, path: String, errno: Int32) -> WALError {
        WALError(.io(operation: operation, path: path, errno: errno))
    }

    /// A record that is not the torn tail of the log is damaged.
    public static func corrupt(file: String, offset: Int, reason: String) -> WALError {
        WALError(.corrupt(file: file, offset: offset, reason: reason))
    }

    /// A record is larger than the log accepts.
    public static func recordTooLarge(_ size: Int, limit: Int) -> WALError {
        WALError(.recordTooLarge(size, limit: limit))
    }

    /// The writer was closed.
    public static let closed = WALError(.closed)

    /// An earlier write or sync failed; the writer accepts nothing more.
    public static func failed(_ cause: String) -> WALError { WALError(.failed(cause)) }

    /// A symbolic link, FIFO, socket or device where tenantd keeps only directories and files.
    public static func foreignFile(_ path: String) -> WALError { WALError(.foreignFile(path)) }

    /// True when the log holds damage recovery must not repair by itself.
    public var isCorruption: Bool {
        if case .corrupt = self.code { return true }
        return false
    }

    /// True for a shortage that passes (EMFILE, ENFILE, ENOMEM when the writer created a
    /// segment): the log is intact and the writer retries by itself. A write's or a sync's
    /// failure is never one, whatever its errno.
    public var isTransient: Bool {
        if case .shortage = self.code { return true }
        return false
    }

    /// True for an I/O error on a path that does not exist (ENOENT).
    public var isMissingPath: Bool {
        guard case .io(_, _, let errno) = self.code else { return false }
        return errno == ENOENT
    }

    /// The errnos of a shortage that passes.
    public static let transientErrnos: Set<Int32> = [EMFILE, ENFILE, ENOMEM]

    /// This error as a shortage, when it is an I/O error with one of ``transientErrnos``.
    public var asShortage: WALError? {
        guard case .io(let operation, let path, let errno) = self.code, Self.transientErrnos.contains(errno) else {
            return nil
        }
        return WALError(.shortage(operation: operation, path: path, errno: errno))
    }

    /// The description without file paths, for a tenant's users: what failed and the errno's name.
    public var publicDescription: String {
        switch self.code {
        case .io(let operation, _, let errno), .shortage(let operation, _, let errno):
            return "\(operation): \(POSIXFile.errorString(errno))"
        case .corrupt(_, _, let reason):
            return "the log is damaged: \(reason)"
        case .recordTooLarge, .closed:
            return self.description
        case .failed:
            return "the log failed earlier and accepts no writes"
        case .foreignFile:
            return "the tenant's directory holds a symbolic link or special file"
        }
    }

    /// True when a record was refused for its size; the log itself is fine.
    public var isRecordTooLarge: Bool {
        if case .recordTooLarge = self.code { return true }
        return false
    }

    /// The file and offset of a corruption, if this is one.
    public var corruptionLocation: (file: String, offset: Int)? {
        if case .corrupt(let file, let offset, _) = self.code { return (file, offset) }
        return nil
    }

    public var description: String {
        switch self.code {
        case .io(let operation, let path, let errno), .shortage(let operation, let path, let errno):
            return "\(operation) \(path): \(POSIXFile.errorString(errno)) (errno \(errno))"
        case .corrupt(let file, let offset, let reason):
            return "corrupt log \(file) at offset \(offset): \(reason)"
        case .recordTooLarge(let size, let limit):
            return "record of \(size) bytes is over the limit of \(limit)"
        case .closed:
            return "log is closed"
        case .failed(let cause):
            return "log failed earlier and accepts no writes: \(cause)"
        case .foreignFile(let path):
            return "\(path) is a symbolic link or special file (tenantd makes none; remove it): refused, never followed"
        }
    }
}
