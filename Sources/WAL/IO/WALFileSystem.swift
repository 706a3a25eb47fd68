#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The file layer: every file operation the logs and the engine make on a data directory.
/// Production uses ``POSIXFileSystem``; tests put a layer in between that fails the Nth call of an
/// operation, or every call after the Nth (a crash at that step), or forgets what was never synced,
/// to try the server against disk faults and power loss without a real failing disk.
public protocol WALFileSystem: Sendable {
    /// Creates (truncating) a segment for appending; returns its descriptor.
    func createSegment(_ path: String) throws -> Int32
    /// Creates (truncating) any other file for writing, mode 0600; returns its descriptor.
    func createFile(_ path: String) throws -> Int32
    /// Writes every byte at the end of the file.
    func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws
    /// fdatasync(2).
    func sync(_ fd: Int32, path: String) throws
    /// close(2).
    func close(_ fd: Int32, path: String)
    /// Opens a descriptor on the directory `path` to sync its file system through: syncfs(2)
    /// reports the write-back errors of that file system since the descriptor was opened.
    func openFileSystemHandle(_ path: String) throws -> Int32
    /// syncfs(2) through a handle from ``openFileSystemHandle(_:)``: every file's writes made
    /// before the call.
    /// - Returns: false where the system has none (the caller syncs file by file).
    func syncFileSystem(handle: Int32, path: String) throws -> Bool
    /// The id of the device holding `path`, to tell file systems apart.
    func deviceID(_ path: String) throws -> UInt64
    /// fsyncs a directory, making the names in it durable.
    func syncDirectory(_ path: String) throws
    /// rename(2).
    func rename(_ from: String, to: String) throws
    /// Creates a directory (mode 0700) and its missing parents; true when it was created.
    func makeDirectory(_ path: String) throws -> Bool
    /// unlink(2).
    func remove(_ path: String) throws
    /// rmdir(2).
    func removeDirectory(_ path: String) throws
    /// Cuts a file to `length` and fsyncs it.
    func truncate(_ path: String, to length: Int) throws
    /// A whole file.
    func readFile(_ path: String) throws -> [UInt8]
    /// Opens a file to read pieces of it with ``read(_:into:at:path:)``; returns its descriptor.
    func openForReading(_ path: String) throws -> Int32
    /// Reads up to `buffer.count` bytes at `offset`; returns how many, 0 at the end of the file.
    func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int, path: String) throws -> Int
    /// The names in a directory, sorted, without `.` and `..`.
    func listDirectory(_ path: String) throws -> [String]
    /// The names in a directory with whether each is a directory, unsorted (one read of the
    /// directory, no stat per name where the file system gives entry types).
    func listDirectoryEntries(_ path: String) throws -> [(name: String, isDirectory: Bool)]
    /// A file's size in bytes.
    func fileSize(_ path: String) throws -> Int
    /// True when `path` names a directory.
    func isDirectory(_ path: String) -> Bool
    /// True when `path` exists.
    func exists(_ path: String) -> Bool
}

/// The real file system.
public struct POSIXFileSystem: WALFileSystem {
    /// Creates the real file system.
    public init() {}

    public func createSegment(_ path: String) throws -> Int32 {
        try POSIXFile.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
    }

    public func createFile(_ path: String) throws -> Int32 {
        try POSIXFile.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC)
    }

    public func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        try POSIXFile.writeAll(fd, bytes, path: path)
    }

    public func sync(_ fd: Int32, path: String) throws {
        try POSIXFile.fdatasync(fd, path: path)
    }

    public func openFileSystemHandle(_ path: String) throws -> Int32 {
        try POSIXFile.open(path, flags: O_RDONLY | O_DIRECTORY)
    }

    public func syncFileSystem(handle: Int32, path: String) throws -> Bool {
        try POSIXFile.syncFileSystem(handle, path: path)
    }

    public func deviceID(_ path: String) throws -> UInt64 {
        try POSIXFile.deviceID(path)
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

    public func makeDirectory(_ path: String) throws -> Bool {
        try POSIXFile.makeDirectory(path)
    }

    public func remove(_ path: String) throws {
        try POSIXFile.remove(path)
    }

    public func removeDirectory(_ path: String) throws {
        guard path.withCString({ rmdir($0) }) == 0 else { throw WALError.io("rmdir", path: path, errno: errno) }
    }

    public func truncate(_ path: String, to length: Int) throws {
        try POSIXFile.truncate(path, to: length)
    }

    public func openForReading(_ path: String) throws -> Int32 {
        // O_NOFOLLOW: a link planted in a tenant directory never reads another tenant's file.
        try POSIXFile.open(path, flags: O_RDONLY | O_NOFOLLOW)
    }

    public func read(
        _ fd: Int32,
        into buffer: UnsafeMutableRawBufferPointer,
        at offset: Int,
        path: String
    ) throws -> Int {
        try POSIXFile.read(fd, into: buffer, at: offset, path: path)
    }

    public func readFile(_ path: String) throws -> [UInt8] {
        try POSIXFile.readAll(path)
    }

    public func listDirectory(_ path: String) throws -> [String] {
        try POSIXFile.listDirectory(path)
    }

    public func listDirectoryEntries(_ path: String) throws -> [(name: String, isDirectory: Bool)] {
        try POSIXFile.listDirectoryEntries(path)
    }

    public func fileSize(_ path: String) throws -> Int {
        try POSIXFile.fileSize(path)
    }

    public func isDirectory(_ path: String) -> Bool {
        POSIXFile.isDirectory(path)
    }

    public func exists(_ path: String) -> Bool {
        POSIXFile.exists(path)
    }
}

extension WALFileSystem {
    /// Writes a whole new file durably through this layer: a temporary name, fdatasync, rename,
    /// fsync of the directory. A crash at any step leaves the old file or the new one, never half.
    public func writeFileAtomically(_ path: String, contents: [UInt8]) throws {
        try self.writeFileAtomically(path) { output in try output(contents) }
    }

    /// ``writeFileAtomically(_:contents:)`` with the contents written piece by piece by `writer`,
    /// which hands each piece to the output it is given: a large file never sits whole in memory.
    public func writeFileAtomically(
        _ path: String,
        writer: (_ output: ([UInt8]) throws -> Void) throws -> Void
    ) throws {
        let temporary = path + ".tmp"
        do {
            let fd = try self.createFile(temporary)
            defer { self.close(fd, path: temporary) }
            try writer { piece in try piece.withUnsafeBytes { try self.write(fd, $0, path: temporary) } }
            try self.sync(fd, path: temporary)
        } catch {
            try? self.remove(temporary)
            throw error
        }
        do {
            try self.rename(temporary, to: path)
        } catch {
            try? self.remove(temporary)
            throw error
        }
        try self.syncDirectory(POSIXFile.parent(of: path))
    }

    /// Creates (or truncates) a file with `contents`, fdatasync'd; its name is durable once its
    /// directory is synced.
    public func writeNewFile(_ path: String, contents: [UInt8]) throws {
        let fd = try self.createFile(path)
        defer { self.close(fd, path: path) }
        try contents.withUnsafeBytes { try self.write(fd, $0, path: path) }
        try self.sync(fd, path: path)
    }

    /// Removes a file or a directory tree. A symbolic link is removed, never followed: a link
    /// planted in a tenant directory cannot make a deletion reach another tenant's files.
    public func removeTree(_ path: String) throws {
        do {
            switch POSIXFile.kind(path) {
            case .directory:
                for name in try self.listDirectory(path) { try self.removeTree(path + "/" + name) }
                try self.removeDirectory(path)
            case .regularFile, .other:
                try self.remove(path)
            case nil:
                break
            }
        } catch let error as WALError where error.isMissingPath {
            // Removed meanwhile by another remover (a trash sweep of a registry starting while
            // the last one's still runs): what was to go is gone.
        }
    }

    /// Copies a directory tree to a new directory, every file and directory made durable;
    /// names ending in `.tmp` (unfinished writes) are left out.
    /// - Throws: ``WALError/foreignFile(_:)`` at a symbolic link, FIFO, socket or device (none of
    ///   them tenantd's: a copy never follows a link to another tenant's files).
    public func copyTree(_ source: String, to destination: String) throws {
        guard POSIXFile.kind(source) == .directory else { throw WALError.foreignFile(source) }
        guard try self.makeDirectory(destination) else {
            throw WALError.io("mkdir", path: destination, errno: EEXIST)
        }
        for name in try self.listDirectory(source) where !name.hasSuffix(".tmp") {
            let from = source + "/" + name
            let to = destination + "/" + name
            switch POSIXFile.kind(from) {
            case .directory: try self.copyTree(from, to: to)
            case .regularFile: try self.copyFile(from, to: to)
            case .other: throw WALError.foreignFile(from)
            case nil: continue  // removed while listed (an old segment after a checkpoint)
            }
        }
        try self.syncDirectory(destination)
    }

    /// The first symbolic link, FIFO, socket or device under `path` (the path itself included),
    /// or nil when it holds only directories and regular files. tenantd makes none of them: a
    /// directory placed by hand that holds one is refused before it is opened or copied.
    public func foreignFile(under path: String, depth: Int = 0) throws -> String? {
        switch POSIXFile.kind(path) {
        case .directory:
            guard depth < WALLimits.maxTreeDepth else { return path }
            for name in try self.listDirectory(path) {
                if let found = try self.foreignFile(under: path + "/" + name, depth: depth + 1) { return found }
            }
            return nil
        case .regularFile, nil:
            return nil
        case .other:
            return path
        }
    }

    /// Copies a file a megabyte at a time (a checkpoint of gigabytes never sits in memory), then
    /// fdatasyncs the copy; its name is durable once its directory is synced.
    public func copyFile(_ source: String, to destination: String) throws {
        let input = try self.openForReading(source)
        defer { self.close(input, path: source) }
        let output = try self.createFile(destination)
        defer { self.close(output, path: destination) }
        var buffer = [UInt8](repeating: 0, count: WALLimits.copyChunkSize)
        var offset = 0
        while true {
            let got = try buffer.withUnsafeMutableBytes { try self.read(input, into: $0, at: offset, path: source) }
            if got == 0 { break }
            try buffer.withUnsafeBytes {
                try self.write(output, UnsafeRawBufferPointer(rebasing: $0[0..<got]), path: destination)
            }
            offset += got
        }
        try self.sync(output, path: destination)
    }

    /// The bytes of every file under `path` (0 for a missing path).
    public func treeSize(_ path: String) throws -> Int64 {
        switch POSIXFile.kind(path) {
        case .directory: break
        case .regularFile: return Int64(try self.fileSize(path))
        case .other, nil: return 0
        }
        var total: Int64 = 0
        for name in try self.listDirectory(path) { total += try self.treeSize(path + "/" + name) }
        return total
    }
}
