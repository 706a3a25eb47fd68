import Synchronization

/// One tenant's usage, for its metrics series and INFO: counters bumped on the request path with
/// one relaxed atomic add each (no lock, no allocation), and gauges the tenant sets as they change.
///
/// Kept by the ``TenantCounterBook`` by tenant id, not by the ``Tenant``: a tenant passivated
/// and opened again goes on counting where it was, as Prometheus expects of a counter.
public final class TenantCounters: Sendable {
    /// The limits a write can be refused on (`tenant_quota_rejections_total{kind}`).
    public enum QuotaKind: Int, CaseIterable, Sendable {
        case messagesPerDay, storage, users

        /// The label value.
        public var label: String {
            switch self {
            case .messagesPerDay: return "messages_per_day"
            case .storage: return "storage"
            case .users: return "users"
            }
        }
    }

    public let tenantID: String
    /// Commands run in the tenant's context.
    public let requests = Atomic<UInt64>(0)
    /// Messages accepted into the tenant's log.
    public let messagesPosted = Atomic<UInt64>(0)
    /// Request and reply bytes on connections in the tenant's context.
    public let bytesIn = Atomic<UInt64>(0)
    public let bytesOut = Atomic<UInt64>(0)
    private let messagesPerDayRejections = Atomic<UInt64>(0)
    private let storageRejections = Atomic<UInt64>(0)
    private let usersRejections = Atomic<UInt64>(0)
    /// Bytes on disk and users, as the tenant last had them (a passive tenant keeps its last
    /// figures: it does not change while closed).
    public let storageBytes = Atomic<Int64>(0)
    public let users = Atomic<Int64>(0)
    /// When its last scheduled backup was written (seconds since the epoch; 0: none since start).
    public let lastBackupSeconds = Atomic<Int64>(0)
    /// Whether the gauges were set since the server started (a tenant not opened since has none).
    public let hasGauges = Atomic<Bool>(false)

    public init(tenantID: String) {
        self.tenantID = tenantID
    }

    /// Counts a write refused with QUOTA on `kind`.
    public func rejected(_ kind: QuotaKind) {
        switch kind {
        case .messagesPerDay: self.messagesPerDayRejections.wrappingAdd(1, ordering: .relaxed)
        case .storage: self.storageRejections.wrappingAdd(1, ordering: .relaxed)
        case .users: self.usersRejections.wrappingAdd(1, ordering: .relaxed)
        }
    }

    /// Writes refused with QUOTA on `kind`.
    public func rejections(_ kind: QuotaKind) -> UInt64 {
        switch kind {
        case .messagesPerDay: return self.messagesPerDayRejections.load(ordering: .relaxed)
        case .storage: return self.storageRejections.load(ordering: .relaxed)
        case .users: return self.usersRejections.load(ordering: .relaxed)
        }
    }

    /// Sets the gauges.
    func set(storageBytes: Int64, users: Int) {
        self.storageBytes.store(storageBytes, ordering: .relaxed)
        self.users.store(Int64(users), ordering: .relaxed)
        self.hasGauges.store(true, ordering: .relaxed)
    }

    /// Counts `count` commands of `bytes` request bytes.
    @inlinable
    public func requested(_ count: UInt64 = 1, bytes: Int) {
        self.requests.wrappingAdd(count, ordering: .relaxed)
        self.bytesIn.wrappingAdd(UInt64(truncatingIfNeeded: bytes), ordering: .relaxed)
    }

    /// Counts reply bytes.
    @inlinable
    public func replied(bytes: Int) {
        self.bytesOut.wrappingAdd(UInt64(truncatingIfNeeded: bytes), ordering: .relaxed)
    }
}

/// Every tenant's ``TenantCounters``, by id: looked up when a tenant opens (never per request).
public final class TenantCounterBook: Sendable {
    private let entries = Mutex<[String: TenantCounters]>([:])

    public init() {}

    /// The counters of `id`, made on first use.
    public func counters(for id: String) -> TenantCounters {
        self.entries.withLock { entries in
            if let counters = entries[id] { return counters }
            let counters = TenantCounters(tenantID: id)
            entries[id] = counters
            return counters
        }
    }

    /// Forgets a deleted or detached tenant's series.
    public func remove(id: String) {
        _ = self.entries.withLock { $0.removeValue(forKey: id) }
    }

    /// Every tenant's counters, in no order.
    public func all() -> [TenantCounters] {
        self.entries.withLock { Array($0.values) }
    }
}
