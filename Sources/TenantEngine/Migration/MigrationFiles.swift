import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One file of a tenant directory as a migration sees it: its path inside the directory, its
/// size and the CRC-32C (unmasked) of its bytes.
public struct MigrationFile: Sendable, Hashable {
    /// Relative to the tenant directory, `/`-separated (`wal/00000000000000000001.wal`).
    public var path: String
    public var size: Int
    public var crc: UInt32

    public init(path: String, size: Int, crc: UInt32) {
        self.path = path
        self.size = size
        self.crc = crc
    }
}

/// The destination of a migration, as the source's registry talks to it: the calls of
/// `TENANT RECEIVE` (docs/protocol.md), made by the server over the protocol.
public protocol MigrationPeer: Sendable {
    /// Starts (or resumes) receiving tenant `id` under `migration`.
    /// - Returns: the files the destination holds for it already.
    func begin(id: String, migration: String) async throws -> [MigrationFile]
    /// Writes `bytes` at `offset` of `path` (the file is cut at `offset` first).
    func chunk(id: String, migration: String, path: String, offset: Int, bytes: [UInt8]) async throws
    /// The files the tenant has, all of them: the destination checks every one, syncs them,
    /// verifies the tenant recovers, and holds it ready (not served) for ``commit(id:migration:)``.
    func prepare(id: String, migration: String, manifest: [MigrationFile]) async throws
    /// Serves the prepared tenant (done again after a crash, it answers OK).
    func commit(id: String, migration: String) async throws
    /// Drops what was received.
    func abort(id: String, migration: String) async throws
    /// Closes the connection.
    func close() async
}

/// Makes the connection to another server for a migration: host, port, operator token.
public typealias MigrationPeerFactory = @Sendable (String, Int, String) async throws -> any MigrationPeer

/// The file work of a migration on both sides: listing and checksumming a tenant directory,
/// and writing what arrives into the destination's staging directory.
enum MigrationFiles {
    /// Whether `path` may name a file of a tenant directory: relative, at most ``EngineLimits.migrationMaxDepth`` parts
    /// of `[A-Za-z0-9._-]`, no `.` or `..` part, not a marker, not an unfinished `.tmp`.
    static func isValidPath(_ path: String) -> Bool {
        guard !path.isEmpty, path.utf8.count <= 255 else { return false }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= EngineLimits.migrationMaxDepth else { return false }
        for part in parts {
            guard !part.isEmpty, part != ".", part != "..",
                part.utf8.allSatisfy({ byte in
                    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                        || byte == 0x2E || byte == 0x5F || byte == 0x2D
                })
            else { return false }
        }
        // Not a marker, nor anything under a marker's name: a directory named like one would
        // make the staging look prepared (and kept) or refuse the next BEGIN.
        return !TenantFiles.markerNames.contains(String(parts[0])) && !path.hasSuffix(".tmp")
    }

    /// The files under `directory`, relative and sorted; markers and `.tmp` files left out. A
    /// file removed while it is listed (an old segment after a checkpoint) is simply not there.
    static func list(_ directory: String, fileSystem: any WALFileSystem) throws -> [String] {
        var found: [String] = []
        func walk(_ relative: String, depth: Int) throws {
            let path = TenantFiles(directory).file(relative)
            let entries: [(name: String, isDirectory: Bool)]
            do {
                entries = try fileSystem.listDirectoryEntries(path)
            } catch {
                if relative.isEmpty { throw error }
                return
            }
            for (name, isDirectory) in entries {
                let child = relative.isEmpty ? name : relative + "/" + name
                if isDirectory {
                    if depth + 1 < EngineLimits.migrationMaxDepth { try walk(child, depth: depth + 1) }
                } else if POSIXFile.kind(TenantFiles(path).file(name)) == .other {
                    // A link planted in the directory is never followed, nor shipped.
                    throw TenantError.invalid(
                        "the tenant directory holds a symbolic link or special file (\(child)): remove it first"
                    )
                } else if isValidPath(child) {
                    found.append(child)
                    guard found.count <= EngineLimits.migrationMaxFiles else {
                        throw TenantError.invalid(
                            "the tenant directory holds more than \(EngineLimits.migrationMaxFiles) files"
                        )
                    }
                }
            }
        }
        try walk("", depth: 0)
        return found.sorted()
    }

    /// A file's size and CRC-32C, and the CRC of its first `prefix` bytes when it has that many.
    /// - Returns: nil for a file that is gone.
    static func checksum(
        _ path: String,
        prefix: Int?,
        fileSystem: any WALFileSystem
    ) throws -> (
        size: Int, crc: UInt32, prefixCRC: UInt32?
    )? {
        guard fileSystem.exists(path) else { return nil }
        let fd: Int32
        do {
            fd = try fileSystem.openForReading(path)
        } catch {
            if !fileSystem.exists(path) { return nil }
            throw error
        }
        defer { fileSystem.close(fd, path: path) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset = 0
        var crc: UInt32 = 0
        var prefixCRC: UInt32? = prefix == 0 ? 0 : nil
        while true {
            // Read up to the prefix's end first, so its CRC falls out of the same pass.
            var want = buffer.count
            if let prefix, offset < prefix { want = min(want, prefix - offset) }
            let got = try buffer.withUnsafeMutableBytes {
                try fileSystem.read(
                    fd,
                    into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]),
                    at: offset,
                    path: path
                )
            }
            if got == 0 { break }
            crc = buffer.withUnsafeBytes {
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<got]), continuing: crc)
            }
            offset += got
            if let prefix, offset == prefix { prefixCRC = crc }
        }
        return (offset, crc, prefixCRC)
    }

    /// Reads `count` bytes of `path` at `offset` (fewer at its end).
    static func read(_ path: String, offset: Int, count: Int, fileSystem: any WALFileSystem) throws -> [UInt8] {
        let fd = try fileSystem.openForReading(path)
        defer { fileSystem.close(fd, path: path) }
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let read = try buffer.withUnsafeMutableBytes {
                try fileSystem.read(
                    fd,
                    into: UnsafeMutableRawBufferPointer(rebasing: $0[got..<count]),
                    at: offset + got,
                    path: path
                )
            }
            if read == 0 { break }
            got += read
        }
        buffer.removeLast(count - got)
        return buffer
    }

    /// Writes `bytes` at `offset` of `directory/path`, the file cut at `offset` first; a file
    /// shorter than `offset` is refused (no holes). Not synced: PREPARE syncs everything.
    static func write(_ bytes: [UInt8], at offset: Int, to path: String, in directory: String) throws {
        // Refused before anything is made: a chunk past the end leaves the staging directory as it was.
        if offset > 0 {
            var existing = stat()
            let held =
                TenantFiles(directory).file(path).withCString { stat($0, &existing) } == 0 ? Int(existing.st_size) : 0
            guard offset <= held else {
                throw TenantError.invalid(
                    "offset \(offset) is past the end of \(path) (\(held) bytes): send from there"
                )
            }
        }
        let parts = path.split(separator: "/")
        var parent = TenantFiles(directory)
        for part in parts.dropLast() {
            parent = TenantFiles(parent.file(String(part)))
            _ = try POSIXFile.makeDirectory(parent.directory)
        }
        let full = TenantFiles(directory).file(path)
        let fd = try POSIXFile.open(full, flags: O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW)
        defer { _ = Glibc.close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw WALError.io("fstat", path: full, errno: errno) }
        guard offset <= Int(status.st_size) else {
            throw TenantError.invalid(
                "offset \(offset) is past the end of \(path) (\(status.st_size) bytes): send from there"
            )
        }
        guard ftruncate(fd, off_t(offset)) == 0 else { throw WALError.io("ftruncate", path: full, errno: errno) }
        var written = 0
        try bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let result = pwrite(fd, raw.baseAddress! + written, raw.count - written, off_t(offset + written))
                if result < 0 {
                    if errno == EINTR { continue }
                    throw WALError.io("pwrite", path: full, errno: errno)
                }
                written += result
            }
        }
    }

    /// fsyncs every file and directory under `directory`, and the directory itself.
    static func syncTree(_ directory: String, fileSystem: any WALFileSystem) throws {
        for (name, isDirectory) in try fileSystem.listDirectoryEntries(directory) {
            let path = TenantFiles(directory).file(name)
            if isDirectory {
                try syncTree(path, fileSystem: fileSystem)
            } else {
                let fd = try POSIXFile.open(path, flags: O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                defer { _ = Glibc.close(fd) }
                try POSIXFile.fsync(fd, path: path)
            }
        }
        try fileSystem.syncDirectory(directory)
    }

    /// A marker's fields, one `key=value` a line.
    static func fields(_ bytes: [UInt8], limit: Int = 4096) -> [String: String] {
        var fields: [String: String] = [:]
        for line in String(decoding: bytes.prefix(limit), as: UTF8.self).split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return fields
    }

    static func encode(_ fields: [(String, String)]) -> [UInt8] {
        Array(fields.map { "\($0.0)=\($0.1)\n" }.joined().utf8)
    }
}

/// A test hook for the crash trials: `TENANTD_FAILPOINT=<name>` kills the process (SIGKILL, as
/// `kill -9` does) when it reaches the step of that name. Unset, it costs one comparison.
public enum Failpoint {
    static let armed: String? = {
        guard let value = getenv("TENANTD_FAILPOINT") else { return nil }
        let name = String(cString: value)
        return name.isEmpty ? nil : name
    }()

    /// Dies here if this step is the one armed.
    public static func hit(_ name: String) {
        guard let armed, armed == name else { return }
        kill(getpid(), SIGKILL)
    }
}

/// A tenant this server handed to another by `TENANT MIGRATE`, as its marker records it.
struct Departure: Sendable {
    var id: String
    var migration: String
    /// `<host>:<port>` of the destination.
    var target: String
    var subdomain: String
    /// The destination's operator token when the migration was given one (`AUTH`), else "".
    var token: String
    /// Where the source's copy is.
    var directory: String
    /// Whether the destination confirmed it serves the tenant (the copy is then in `.migrated/`).
    var committed: Bool
    /// When the decision was taken (ms).
    var at: Int64
    /// The tenant's credential keys when it left: AUTH is answered MIGRATED only with a right
    /// token (nil in markers of earlier versions: WRONGPASS for everyone).
    var credentials: Set<CredentialKey>? = nil

    /// What a directory's `MIGRATED_TO` marker says.
    enum Probe {
        /// No marker: the directory is a tenant like any other.
        case absent
        case departed(Departure)
        /// A marker that cannot be read or makes no sense: the directory must not be served
        /// (it may be another server's tenant now), and the operator is told.
        case unreadable(String)
    }

    /// Reads a directory's `MIGRATED_TO` marker, failing closed: only a marker that is certainly
    /// absent (ENOENT) lets the directory be served.
    static func probe(id: String?, directory: String, committed: Bool) -> Probe {
        let marker = TenantFiles(directory).migratedTo
        var info = stat()
        if marker.withCString({ stat($0, &info) }) != 0 {
            let code = errno
            return code == ENOENT ? .absent : .unreadable("stat \(marker): \(String(cString: strerror(code)))")
        }
        let bytes: [UInt8]
        do {
            bytes = try POSIXFile.readAll(marker)
        } catch {
            return .unreadable("\(error)")
        }
        let fields = MigrationFiles.fields(bytes, limit: EngineLimits.migrationMarkerLimit)
        guard let tenant = fields["tenant"], Names.isValidTenantID(tenant), id == nil || id == tenant,
            let migration = fields["migration"], let target = fields["target"]
        else { return .unreadable("\(marker) is malformed") }
        return .departed(
            Departure(
                id: tenant,
                migration: migration,
                target: target,
                subdomain: fields["subdomain"] ?? "",
                token: fields["token"] ?? "",
                directory: directory,
                committed: committed,
                at: Int64(fields["at"] ?? "") ?? 0,
                credentials: fields["keys"].flatMap(Self.decodeKeys)
            )
        )
    }

    /// The marker's bytes.
    var marker: [UInt8] {
        var fields = [
            ("tenant", self.id), ("migration", self.migration), ("target", self.target),
            ("subdomain", self.subdomain), ("token", self.token), ("at", "\(self.at)"),
        ]
        if let credentials {
            fields.append(("keys", credentials.map { String($0.value, radix: 16) }.joined(separator: ",")))
        }
        return MigrationFiles.encode(fields)
    }

    /// The `keys` field: hex u64s separated by commas; nil when any is not one.
    static func decodeKeys(_ text: String) -> Set<CredentialKey>? {
        guard !text.isEmpty else { return [] }
        var keys = Set<CredentialKey>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard part.utf8.count <= 16, let value = UInt64(part, radix: 16) else { return nil }
            keys.insert(CredentialKey(value: value))
        }
        return keys
    }
}

/// The departures ``DirectoryStore/load(context:)`` found, for the registry to take.
final class DepartureBook: Sendable {
    private let list = Mutex<[Departure]>([])

    func set(_ departures: [Departure]) { self.list.withLock { $0 = departures } }

    func take() -> [Departure] {
        self.list.withLock { list in
            defer { list = [] }
            return list
        }
    }
}
