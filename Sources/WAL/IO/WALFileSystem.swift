#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The file operations a log's writer makes. Production uses ``POSIXFileSystem``; tests put a
/// layer in between that fails the Nth write or sync, or forgets what was never synced, to try
/// the log against disk faults and power loss without a real failing disk.
public protocol WALFileSystem: Sendable {
    /// Creates (truncating) a segment for appending; returns its descriptor.
    func createSegment(_ path: String) throws -> Int32
    /// Writes every byte at the end of the file.
    func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws
    /// fdatasync(2).
    func sync(_ fd: Int32, path: String) throws
    /// close(2).
    func close(_ fd: Int32, path: String)
    /// fsyncs a directory, making the names in it durable.
    func syncDirectory(_ path: String) throws
    /// rename(2).
    func rename(_ from: String, to: String) throws
}

/// The real file system.
public struct POSIXFileSystem: WALFileSystem {
    /// Creates the real file system.
    public init() {}

    public func createSegment(_ path: String) throws -> Int32 {
        try POSIXFile.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
    }

    public func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        try POSIXFile.writeAll(fd, bytes, path: path)
    }

    public func sync(_ fd: Int32, path: String) throws {
        try POSIXFile.fdatasync(fd, path: path)
    }

    public func close(_ fd: Int32, path: String) {
        _ = Glibc.close(fd)
    }

    public func syncDirectory(_ path: String) throws {
        try POSIXFile.fsyncDirectory(path)
    }

    public func rename(_ from: String, to: String) throws {
        try POSIXFile.rename(from, to: to)
    }
}
