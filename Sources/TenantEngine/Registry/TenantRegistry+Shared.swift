import Logging
import WAL

extension TenantRegistry {
    /// `schema` and `shared`: replays the one log every tenant writes, rebuilding every tenant,
    /// and opens it for append.
    func openSharedLog() async throws {
        let configuration = self.configuration
        let directory = configuration.sharedLogDirectory
        let logger = self.logger
        let (states, storage, writer) = try await runBlocking {
            var states: [String: TenantState] = [:]
            var storage: [String: Int64] = [:]
            let walConfiguration = configuration.sharedWALConfiguration
            let reader = WALReader(directory: directory, maxRecordSize: walConfiguration.maxRecordSize)
            let result: WALRecoveryResult
            do {
                result = try reader.replayRecords(repair: true, logger: logger) { record in
                    do {
                        let (id, payload) = try SharedLogPayload.split(record.payload)
                        let decoded = try TenantRecord.decode(type: record.type, payload: payload)
                        if case .tenantDeleted = decoded {
                            states[id] = nil
                            storage[id] = nil
                            return
                        }
                        try states[id, default: TenantState()].apply(decoded)
                        storage[id, default: 0] += Int64(record.storedSize)
                    } catch {
                        throw TenantError(.ioError, "shared log record \(record.lsn) does not decode: \(error)")
                    }
                }
            } catch let error as WALError {
                throw TenantError(.ioError, "the shared log is damaged: \(error)")
            }
            let writer = try WALWriter(
                directory: directory,
                lastLSN: result.lastLSN,
                configuration: walConfiguration,
                fileSystem: configuration.fileSystem
            )
            return (states, storage, writer)
        }
        self.sharedLog = writer
        for (id, state) in states {
            guard let metadata = state.metadata, metadata.tenantID == id else {
                self.logger.error("shared log holds records of tenant \(id) without its metadata; not served")
                continue
            }
            self.active[id] = self.makeSharedTenant(state: state, storage: storage[id] ?? 0)
            self.catalog.insert(metadata)
        }
    }

    /// A tenant writing its share of the shared log.
    func makeSharedTenant(state: TenantState, storage: Int64) -> Tenant {
        let id = state.metadata!.tenantID
        let executor =
            self.configuration.isolation == .shared ? self.sharedExecutor : TenantExecutor(label: "tenantd.tenant")
        return Tenant(
            data: state,
            path: self.configuration.sharedLogDirectory,
            log: .shared(self.sharedLog!, tenantID: id),
            storageBytes: storage,
            executor: executor,
            configuration: self.configuration,
            logger: self.logger,
            onMetadataChange: self.metadataObserver()
        )
    }

    /// Writes a new tenant's first records to the shared log, durably, and activates it.
    func createInSharedLog(metadata: TenantMetadata, owner: User?) async throws {
        guard let sharedLog = self.sharedLog else { throw TenantError(.loading, "shared log is not open") }
        var state = TenantState()
        var storage: Int64 = 0
        var last: UInt64 = 0
        do {
            var records: [TenantRecord] = [.metadata(metadata)]
            if let owner { records.append(.userPut(owner)) }
            for record in records {
                var payload = SharedLogPayload.prefix(for: metadata.tenantID)
                payload += record.encode()
                let (lsn, size) = try payload.withUnsafeBytes {
                    try sharedLog.appendRecord(type: record.kind.rawValue, payload: $0)
                }
                try state.apply(record)
                storage += Int64(size)
                last = lsn
            }
            try await sharedLog.waitUntilDurable(last)
        } catch {
            throw TenantError.ioError("could not write the new tenant to the shared log: \(error)")
        }
        self.active[metadata.tenantID] = self.makeSharedTenant(state: state, storage: storage)
        self.catalog.insert(metadata)
    }
}
