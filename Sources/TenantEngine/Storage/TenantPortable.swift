import Logging
import WAL

/// A tenant directory read as recovery reads it, without changing a byte: what `tenantctl stats`
/// and `tenantctl export` read. The whole state is in memory (an offline tool's choice: one
/// tenant at a time).
public struct OfflineTenant: Sendable {
    /// The tenant directory.
    public let path: String
    public let metadata: TenantMetadata
    /// The users, by name.
    public let users: [User]
    /// The rooms' names, sorted.
    public let roomNames: [String]
    public let messageCount: Int
    public let lastLSN: UInt64
    private let rooms: [String: Room]

    /// Reads `path`.
    /// - Throws: ``TenantError`` (`storageFailed`) naming the damage, or when it holds no tenant.
    public static func read(
        path: String,
        maxRecordSize: Int = WALLimits.defaultMaxRecordSize
    ) throws
        -> OfflineTenant
    {
        let recovered: DirectoryStore.Recovered
        do {
            recovered = try DirectoryStore.recover(
                files: TenantFiles(path),
                fileSystem: POSIXFileSystem(),
                maxRecordSize: maxRecordSize,
                repair: false,
                logger: nil
            )
        } catch {
            throw TenantError.ioError("\(path): \(error)")
        }
        guard let metadata = recovered.state.metadata else {
            throw TenantError.ioError("no tenant metadata in \(path)")
        }
        return OfflineTenant(
            path: path,
            metadata: metadata,
            users: recovered.state.users.values.sorted { $0.name < $1.name },
            roomNames: recovered.state.rooms.keys.sorted(),
            messageCount: recovered.state.messageCount,
            lastLSN: recovered.result.lastLSN,
            rooms: recovered.state.rooms
        )
    }

    /// A room's messages, in seq order (seqs 1 to its count).
    public func messages(in room: String) throws -> [Message] {
        guard let stored = self.rooms[room] else { return [] }
        return try stored.allMessages()
    }

    /// The messages in `room` with seqs in `range` (1-based, clamped to the room).
    public func messages(in room: String, seqs range: ClosedRange<Int>) throws -> [Message] {
        guard let stored = self.rooms[room] else { return [] }
        let lower = max(1, range.lowerBound)
        let upper = min(stored.count, range.upperBound)
        guard lower <= upper else { return [] }
        return try stored.messages(in: (lower - 1)..<upper)
    }

    /// How many messages `room` holds.
    public func count(in room: String) -> Int { self.rooms[room]?.count ?? 0 }

    /// The bytes of every message's text, uncompressed.
    public func textBytes() throws -> Int64 {
        var total: Int64 = 0
        for room in self.rooms.values {
            try room.forEachChunk { columns in total += Int64(columns.texts.count) }
        }
        return total
    }
}

/// Builds a tenant directory from the portable form (`tenantctl import`): the metadata, the users
/// (each with a new token), then the messages in room and seq order, appended to a new log in a
/// staging directory, synced, and renamed into `<data>/<prefix><id>/` only once complete, so an
/// interrupted import leaves no tenant behind.
public final class TenantImport {
    public let metadata: TenantMetadata
    /// Where the tenant's directory will be.
    public let path: String
    private let staging: String
    private let writer: WALWriter
    private let journal: DirectoryJournal
    private let fileSystem = POSIXFileSystem()
    private var users: Set<String> = []
    private var lastSeq: [String: UInt64] = [:]
    private var currentRoom: String?
    private var unflushedBytes = 0
    /// Messages appended.
    public private(set) var messages = 0
    private var finished = false
    /// The longest text a message may have (the server's `TENANT_MAX_MESSAGE_BYTES`).
    private let maxMessageBytes: Int
    /// The latest timestamp a message may have: now, and five minutes of clock skew. A message
    /// from the future would move the tenant's daily count to its day.
    private let latestTimestamp: Int64

    /// Starts an import of the tenant `metadata` describes into `dataDirectory`.
    /// - Throws: ``TenantError``: INVALID for metadata that breaks the rules, EXISTS when the tenant's
    ///   directory is there already, IOERR when the staging directory cannot be made.
    public init(
        metadata: TenantMetadata,
        dataDirectory: String,
        prefix: String = "tenant_",
        maxMessageBytes: Int = 65_536,
        now: Int64 = EngineConfiguration.systemClock()
    ) throws {
        guard Names.isValidTenantID(metadata.tenantID) else {
            throw TenantError.invalid("tenant_id must be 1-50 bytes of [a-z0-9-]")
        }
        guard Names.isValidTenantName(metadata.name) else { throw TenantError.invalid("name must be 1-200 bytes") }
        if !metadata.subdomain.isEmpty, let problem = Names.subdomainProblem(metadata.subdomain) {
            throw TenantError.invalid(problem)
        }
        guard (0...EngineLimits.maxUsersLimit).contains(metadata.maxUsers),
            (0...EngineLimits.maxStorageBytesLimit).contains(metadata.maxStorageBytes),
            (0...EngineLimits.maxMessagesPerDayLimit).contains(metadata.maxMessagesPerDay)
        else {
            throw TenantError.invalid(
                "limits must be 0 (none) or more, at most max_users \(EngineLimits.maxUsersLimit), "
                    + "max_messages_per_day \(EngineLimits.maxMessagesPerDayLimit)"
            )
        }
        try Tenant.validateSettings(metadata.settings)
        guard metadata.createdAt >= 0, metadata.updatedAt >= metadata.createdAt else {
            throw TenantError.invalid("created_at must be 0 or more, and updated_at no earlier")
        }
        let layout = DataLayout(root: dataDirectory, prefix: prefix)
        self.metadata = metadata
        self.maxMessageBytes = maxMessageBytes
        self.latestTimestamp = now + 300_000
        self.path = layout.tenantDirectory(metadata.tenantID)
        self.staging = layout.importingDirectory(metadata.tenantID)
        guard !POSIXFile.exists(self.path) else {
            throw TenantError(.alreadyExists, "\(self.path) exists: the tenant is there already")
        }
        try OfflineSnapshot.checkNames(id: metadata.tenantID, subdomain: metadata.subdomain, in: layout)
        guard !POSIXFile.exists(self.staging) else {
            throw TenantError(
                .alreadyExists,
                "\(self.staging) exists: another import of this tenant is running, or one was interrupted (remove it)"
            )
        }
        do {
            guard try self.fileSystem.makeDirectory(self.staging) else {
                throw TenantError(.alreadyExists, "\(self.staging) appeared: another import of this tenant is running")
            }
        } catch let error as TenantError {
            throw error
        } catch {
            throw TenantError.ioError("cannot make \(self.staging): \(error)")
        }
        do {
            self.writer = try WALWriter(
                directory: TenantFiles(self.staging).wal,
                lastLSN: 0,
                configuration: WALConfiguration(fsync: .no),
                fileSystem: self.fileSystem
            )
        } catch {
            try? self.fileSystem.removeTree(self.staging)
            throw TenantError.ioError("cannot make \(self.staging): \(error)")
        }
        self.journal = DirectoryJournal(writer: self.writer, files: TenantFiles(self.path), fileSystem: self.fileSystem)
        do {
            try self.append(.metadata(metadata))
        } catch {
            try? self.fileSystem.removeTree(self.staging)
            throw error
        }
    }

    /// Adds a user with a new token.
    /// - Returns: the token (shown once: only its hash is stored).
    public func addUser(name: String, role: Role, joinedAt: Int64) throws -> String {
        guard Names.isValidUserName(name) else {
            throw TenantError.invalid("user name '\(name.prefix(64))' is invalid")
        }
        guard self.users.insert(name).inserted else { throw TenantError.invalid("user '\(name)' appears twice") }
        let token = Tokens.generate()
        try self.append(.userPut(User(name: name, role: role, tokenHash: Tokens.hash(token), joinedAt: joinedAt)))
        return token
    }

    /// Adds the next message: rooms one after another, each room's seqs from 1 without a gap.
    public func addMessage(room: String, seq: UInt64, timestamp: Int64, user: String, text: String) async throws {
        guard Names.isValidRoom(room) else { throw TenantError.invalid("room name '\(room.prefix(128))' is invalid") }
        if room != self.currentRoom {
            guard self.lastSeq[room] == nil else {
                throw TenantError.invalid("room '\(room)' appears again after another room: messages go in room order")
            }
            self.currentRoom = room
        }
        let expected = (self.lastSeq[room] ?? 0) + 1
        guard seq == expected else {
            throw TenantError.invalid("room '\(room)': seq \(seq) where \(expected) comes next")
        }
        guard Names.isValidUserName(user) || user == Principal.operator.displayName else {
            throw TenantError.invalid("message author '\(user.prefix(64))' is not a user name")
        }
        guard (0...self.latestTimestamp).contains(timestamp) else {
            throw TenantError.invalid("ts \(timestamp) is before 1970 or in the future")
        }
        guard text.utf8.count <= self.maxMessageBytes else {
            throw TenantError(
                .tooLarge,
                "a message of \(text.utf8.count) bytes is over the limit of \(self.maxMessageBytes) (--max-message-bytes)"
            )
        }
        try self.append(.message(room: room, Message(seq: seq, timestamp: timestamp, user: user, text: text)))
        self.lastSeq[room] = seq
        self.messages += 1
        if self.unflushedBytes >= EngineLimits.importFlushBytes {
            try await self.writer.flush()
            self.unflushedBytes = 0
        }
    }

    /// Makes the log durable and renames the directory into place.
    /// - Returns: the tenant's directory.
    public func finish() async throws -> String {
        do {
            try await self.writer.flushAndSync()
            try await self.writer.close()
            try self.fileSystem.syncDirectory(self.staging)
            guard !POSIXFile.exists(self.path) else {
                throw TenantError(.alreadyExists, "\(self.path) appeared during the import")
            }
            try self.fileSystem.rename(self.staging, to: self.path)
            do {
                try self.fileSystem.syncDirectory(POSIXFile.parent(of: self.path))
            } catch {
                // In place but maybe not durably: not reported as imported, so not left there (its
                // tokens would never be shown).
                try? self.fileSystem.removeTree(self.path)
                throw error
            }
            self.finished = true
            return self.path
        } catch let error as TenantError {
            throw error
        } catch {
            throw TenantError.ioError("import into \(self.path) failed: \(error)")
        }
    }

    /// Gives up: the staging directory is removed.
    public func abandon() async {
        guard !self.finished else { return }
        try? await self.writer.close()
        try? self.fileSystem.removeTree(self.staging)
    }

    private func append(_ record: TenantRecord) throws {
        do {
            let (_, size) = try self.journal.append(record)
            self.unflushedBytes += size
        } catch let error as WALError where error.isRecordTooLarge {
            throw TenantError(.tooLarge, "a record is over the log's bound: \(error)")
        } catch {
            throw TenantError.ioError("\(error)")
        }
    }
}

/// Copies of offline tenant directories: `tenantctl snapshot` and `tenantctl restore`.
public enum OfflineSnapshot {
    /// Copies a tenant directory (tenantd not serving it) to `<destination>/<its name>/`, through a
    /// staging name renamed once every file is synced; the copy is verified.
    /// - Returns: the copy's path and what verifying it found.
    /// - Throws: ``TenantError``: IOERR when the source is damaged (nothing is copied) or a copy
    ///   fails; EXISTS when the copy is there already; NOTFOUND when `destination` is missing.
    public static func copy(
        tenantDirectory source: String,
        into destination: String
    ) throws -> (
        path: String, verification: TenantVerification
    ) {
        let source = Self.trimmed(source)
        let before = TenantVerifier.verify(path: source)
        if let problem = before.problem { throw TenantError.ioError("\(source) is damaged: \(problem)") }
        guard POSIXFile.isDirectory(destination) else {
            throw TenantError.notFound("\(destination) is not a directory")
        }
        let target = TenantFiles(Self.trimmed(destination)).file(POSIXFile.basename(source))
        try Self.place(source, at: target)
        return (target, TenantVerifier.verify(path: target))
    }

    /// Restores a snapshot into a data directory as `<data>/<prefix><id>/`: verified first, copied
    /// under a staging name, renamed into place. Then `TENANT ATTACH <id>` (or a start) serves it.
    /// - Returns: the tenant id and its new directory.
    /// - Throws: IOERR when the snapshot is damaged; EXISTS when the tenant is in `dataDirectory`.
    public static func restore(
        snapshot: String,
        dataDirectory: String,
        prefix: String = "tenant_"
    ) throws -> (
        id: String, path: String
    ) {
        let snapshot = Self.trimmed(snapshot)
        let report = TenantVerifier.verify(path: snapshot)
        if let problem = report.problem { throw TenantError.ioError("\(snapshot) is damaged: \(problem)") }
        guard let id = report.tenantID, Names.isValidTenantID(id) else {
            throw TenantError.ioError("\(snapshot) names no valid tenant id")
        }
        guard POSIXFile.isDirectory(dataDirectory) else {
            throw TenantError.notFound("\(dataDirectory) is not a directory")
        }
        let layout = DataLayout(root: Self.trimmed(dataDirectory), prefix: prefix)
        let target = layout.tenantDirectory(id)
        try Self.checkNames(id: id, subdomain: report.subdomain, in: layout)
        try Self.place(snapshot, at: target, note: (TenantFiles.restoredFromName, snapshot))
        return (id, target)
    }

    /// Refuses a tenant whose id or subdomain names another tenant of the data directory (its
    /// catalog): ids and subdomains are one namespace, so an import may not take over a name.
    /// The server checks again at ATTACH and start-up, whatever the catalog says.
    static func checkNames(id: String, subdomain: String, in layout: DataLayout) throws {
        guard let bytes = try? POSIXFile.readAll(layout.catalogFile), let catalog = Catalog.decode(bytes: bytes)
        else { return }
        for name in [id, subdomain] {
            if let other = catalog.otherTenant(named: name, besides: id) {
                throw TenantError(.alreadyExists, "'\(name)' names tenant \(other) in \(layout.root) already")
            }
        }
    }

    /// Copies `source` to `target` through `<target>.partial`, synced, then renamed; `note` is a
    /// file written into the copy first.
    private static func place(_ source: String, at target: String, note: (name: String, text: String)? = nil) throws {
        guard !POSIXFile.exists(target) else { throw TenantError(.alreadyExists, "\(target) exists") }
        let fileSystem = POSIXFileSystem()
        let partial = target + ".partial"
        do {
            try? fileSystem.removeTree(partial)
            try fileSystem.copyTree(source, to: partial)
            if let note {
                try fileSystem.writeFileAtomically(
                    TenantFiles(partial).file(note.name),
                    contents: Array(note.text.utf8)
                )
                try fileSystem.syncDirectory(partial)
            }
            try fileSystem.rename(partial, to: target)
            try fileSystem.syncDirectory(POSIXFile.parent(of: target))
        } catch {
            try? fileSystem.removeTree(partial)
            throw TenantError.ioError("copying \(source) to \(target) failed: \(error)")
        }
    }

    private static func trimmed(_ path: String) -> String {
        path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    }
}
