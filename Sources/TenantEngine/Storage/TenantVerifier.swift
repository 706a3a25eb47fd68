import WAL

/// What `tenantctl verify` found in one tenant directory.
public struct TenantVerification: Sendable {
    /// The tenant directory.
    public var path: String
    /// The tenant id its metadata names, if it got that far.
    public var tenantID: String?
    /// The subdomain its metadata names ("" if none).
    public var subdomain = ""
    /// Records read.
    public var records = 0
    /// Messages, users and rooms in the replayed state.
    public var messages = 0
    public var users = 0
    public var rooms = 0
    /// Tenants in a shared log.
    public var tenants = 1
    /// The last lsn.
    public var lastLSN: UInt64 = 0
    /// The lsn the checkpoint loaded covers (0: none).
    public var checkpointLSN: UInt64 = 0
    /// A torn tail recovery would cut off (verify changes nothing).
    public var tornTail: WALTornTail?
    /// The first damage found, with its file and offset: the directory does not recover as it is.
    public var problem: String?
}

/// Reads a tenant directory the way recovery does, without changing a byte of it.
public enum TenantVerifier {
    /// The memory budget of a verification's messages unless told (``verify(path:maxRecordSize:fileSystem:memory:)``).
    public static let defaultMemory = 64 << 20

    /// Verifies one tenant directory.
    /// - Parameters:
    ///   - path: the tenant directory (holding `wal/`).
    ///   - maxRecordSize: the bound on one record.
    /// - Returns: the report; `problem` is set when the log is corrupt or holds no tenant.
    ///   - memory: the budget the replayed messages are held within: past it they move to an
    ///     unlinked cold file beside the directory, as the server's do, so that a copied or
    ///     crafted directory is verified in bounded memory. Default 64 MiB.
    public static func verify(
        path: String,
        maxRecordSize: Int = WALLimits.defaultMaxRecordSize,
        fileSystem: any WALFileSystem = POSIXFileSystem(),
        memory: MemoryBudget? = nil
    )
        -> TenantVerification
    {
        var report = TenantVerification(path: path)
        var state = TenantState()
        let budget = memory ?? MemoryBudget(maxMemory: Self.defaultMemory)
        do {
            let recovered = try DirectoryStore.recover(
                files: TenantFiles(path),
                fileSystem: fileSystem,
                maxRecordSize: maxRecordSize,
                repair: false,
                logger: nil,
                makeCold: { ColdStore(budget: budget, directory: POSIXFile.parent(of: path), logger: nil) }
            )
            state = recovered.state
            report.records = recovered.result.recordCount
            report.lastLSN = recovered.result.lastLSN
            report.tornTail = recovered.result.tornTail
            report.checkpointLSN = recovered.checkpointLSN
            if state.metadata == nil { report.problem = "no tenant metadata in \(path)" }
        } catch {
            report.problem = "\(error)"
        }
        report.tenantID = state.metadata?.tenantID
        report.subdomain = state.metadata?.subdomain ?? ""
        report.messages = state.messageCount
        report.users = state.users.count
        report.rooms = state.rooms.count
        return report
    }

    /// Verifies the shared log of the `schema` and `shared` strategies: its checkpoint and its log.
    /// - Returns: one report for the whole log; `tenantID` is nil and `users`, `rooms` and
    ///   `messages` add up every tenant's.
    public static func verifySharedLog(
        dataDirectory: String,
        maxRecordSize: Int = WALLimits.defaultMaxRecordSize + 256
    )
        -> TenantVerification
    {
        let files = DataLayout(root: dataDirectory).sharedLog
        var report = TenantVerification(path: files.wal)
        var states: [String: TenantState] = [:]
        do {
            let recovered = try SharedLogStore.recover(
                files: files,
                fileSystem: POSIXFileSystem(),
                maxRecordSize: maxRecordSize,
                repair: false,
                logger: nil
            )
            states = recovered.states
            report.records = recovered.result?.recordCount ?? 0
            report.lastLSN = recovered.result?.lastLSN ?? 0
            report.tornTail = recovered.result?.tornTail
            report.checkpointLSN = recovered.checkpointLSN
        } catch {
            report.problem = "\(error)"
        }
        report.tenants = states.count
        report.messages = states.values.reduce(0) { $0 + $1.messageCount }
        report.users = states.values.reduce(0) { $0 + $1.users.count }
        report.rooms = states.values.reduce(0) { $0 + $1.rooms.count }
        return report
    }
}
