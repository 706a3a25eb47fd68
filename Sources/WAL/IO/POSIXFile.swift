import CPOSIX

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin wrappers over the POSIX calls the log needs, each turning a failure into a ``WALError``.
public enum POSIXFile {
    /// The text of an errno value.
    public static func errorString(_ code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// Opens (or creates, with `mode`) a file.
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o600) throws -> Int32 {
        let fd = path.withCString { Glibc.open($0, flags | O_CLOEXEC, mode) }
        guard fd >= 0 else { throw WALError.io("open", path: path, errno: errno) }
        return fd
    }

    /// Writes every byte, retrying short writes and EINTR.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                throw WALError.io("write", path: path, errno: errno)
            }
            offset += written
        }
    }

    /// pread(2), retried on EINTR: up to `buffer.count` bytes at `offset`, 0 at the end.
    public static func read(
        _ fd: Int32,
        into buffer: UnsafeMutableRawBufferPointer,
        at offset: Int,
        path: String
    ) throws -> Int {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        while true {
            let got = pread(fd, base, buffer.count, off_t(offset))
            if got >= 0 { return got }
            if errno != EINTR { throw WALError.io("read", path: path, errno: errno) }
        }
    }

    /// Reads a whole file.
    public static func readAll(_ path: String) throws -> [UInt8] {
        let fd = try open(path, flags: O_RDONLY)
        defer { _ = Glibc.close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw WALError.io("fstat", path: path, errno: errno) }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var offset = 0
        try bytes.withUnsafeMutableBytes { buffer in
            while offset < buffer.count {
                let got = Glibc.read(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if got < 0 {
                    if errno == EINTR { continue }
                    throw WALError.io("read", path: path, errno: errno)
                }
                if got == 0 { break }
                offset += got
            }
        }
        if offset < bytes.count { bytes.removeLast(bytes.count - offset) }
        return bytes
    }

    /// Writes a whole new file durably: a temporary name, fsync, rename, fsync of the directory.
    public static func writeFileAtomically(_ path: String, contents: [UInt8], mode: mode_t = 0o600) throws {
        let temporary = path + ".tmp"
        let fd = try open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do {
            try contents.withUnsafeBytes { try writeAll(fd, $0, path: temporary) }
            try fsync(fd, path: temporary)
            _ = Glibc.close(fd)
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
        try rename(temporary, to: path)
        try fsyncDirectory(parent(of: path))
    }

    /// fdatasync(2).
    public static func fdatasync(_ fd: Int32, path: String) throws {
        guard Glibc.fdatasync(fd) == 0 else { throw WALError.io("fdatasync", path: path, errno: errno) }
    }

    /// fsync(2).
    public static func fsync(_ fd: Int32, path: String) throws {
        guard Glibc.fsync(fd) == 0 else { throw WALError.io("fsync", path: path, errno: errno) }
    }

    /// The id of the device (the file system) holding `path`.
    public static func deviceID(_ path: String) throws -> UInt64 {
        let fd = try open(path, flags: O_RDONLY)
        defer { _ = Glibc.close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw WALError.io("fstat", path: path, errno: errno) }
        return UInt64(info.st_dev)
    }

    /// syncfs(2) through `fd`: every write made to its file system before the call is durable
    /// once it returns, and a write-back error since `fd` was opened is reported (Linux 5.8+).
    /// - Returns: false where the system has no syncfs.
    public static func syncFileSystem(_ fd: Int32, path: String) throws -> Bool {
        guard cposix_syncfs(fd) == 0 else {
            if errno == ENOSYS { return false }
            throw WALError.io("syncfs", path: path, errno: errno)
        }
        return true
    }

    /// Opens a directory and fsyncs it, so the names created or renamed in it are durable.
    public static func fsyncDirectory(_ path: String) throws {
        let fd = try open(path, flags: O_RDONLY | O_DIRECTORY)
        defer { _ = Glibc.close(fd) }
        try fsync(fd, path: path)
    }

    /// rename(2).
    public static func rename(_ from: String, to: String) throws {
        let result = from.withCString { source in to.withCString { Glibc.rename(source, $0) } }
        guard result == 0 else { throw WALError.io("rename", path: from, errno: errno) }
    }

    /// Truncates a file to `length` and fsyncs it.
    public static func truncate(_ path: String, to length: Int) throws {
        let fd = try open(path, flags: O_WRONLY)
        defer { _ = Glibc.close(fd) }
        guard ftruncate(fd, off_t(length)) == 0 else { throw WALError.io("ftruncate", path: path, errno: errno) }
        try fsync(fd, path: path)
    }

    /// unlink(2).
    public static func remove(_ path: String) throws {
        guard path.withCString({ unlink($0) }) == 0 else { throw WALError.io("unlink", path: path, errno: errno) }
    }

    /// Creates a directory (and its missing parents); true when it was created.
    @discardableResult
    public static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws -> Bool {
        if path.withCString({ mkdir($0, mode) }) == 0 { return true }
        let code = errno
        if code == EEXIST { return false }
        if code == ENOENT {
            let up = parent(of: path)
            if up != path {
                try makeDirectory(up, mode: mode)
                if path.withCString({ mkdir($0, mode) }) == 0 { return true }
                if errno == EEXIST { return false }
            }
        }
        throw WALError.io("mkdir", path: path, errno: code)
    }

    /// The names in a directory, without `.` and `..`, sorted.
    public static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = path.withCString({ opendir($0) }) else {
            throw WALError.io("opendir", path: path, errno: errno)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// The names in a directory with whether each is a directory (from the entry's type, so
    /// without a stat per name unless the file system does not tell), unsorted.
    public static func listDirectoryEntries(_ path: String) throws -> [(name: String, isDirectory: Bool)] {
        guard let dir = path.withCString({ opendir($0) }) else {
            throw WALError.io("opendir", path: path, errno: errno)
        }
        defer { closedir(dir) }
        var entries: [(name: String, isDirectory: Bool)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            guard name != "." && name != ".." else { continue }
            let type = Int32(entry.pointee.d_type)
            // Never through a link: a link to a directory is not a directory here.
            let isDirectory =
                type == Int32(DT_UNKNOWN) ? Self.kind(path + "/" + name) == .directory : type == Int32(DT_DIR)
            entries.append((name, isDirectory))
        }
        return entries
    }

    /// True when `path` exists.
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return path.withCString { stat($0, &info) } == 0
    }

    /// What a directory entry is, as `lstat` tells: a link is never followed.
    public enum EntryKind: Sendable, Equatable {
        case directory
        case regularFile
        /// A symbolic link, a FIFO, a socket or a device: nothing tenantd makes.
        case other
    }

    /// The kind of `path` itself (a link is `.other`, never what it points to); nil when absent.
    public static func kind(_ path: String) -> EntryKind? {
        var info = stat()
        guard path.withCString({ lstat($0, &info) }) == 0 else { return nil }
        switch info.st_mode & S_IFMT {
        case S_IFDIR: return .directory
        case S_IFREG: return .regularFile
        default: return .other
        }
    }

    /// True when `path` is a directory (following links: for paths the operator names).
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        guard path.withCString({ stat($0, &info) }) == 0 else { return false }
        return (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The size of a file in bytes.
    public static func fileSize(_ path: String) throws -> Int {
        var info = stat()
        guard path.withCString({ stat($0, &info) }) == 0 else { throw WALError.io("stat", path: path, errno: errno) }
        return Int(info.st_size)
    }

    /// The directory part of a path.
    public static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    /// The last component of a path.
    public static func basename(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }
}
