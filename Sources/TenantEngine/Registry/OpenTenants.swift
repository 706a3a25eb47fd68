import Synchronization

/// The registry's open tenants by id, readable from any thread without a hop.
///
/// The registry changes it on its actor; the synchronous lane reads it in the channel handler to
/// resolve a path-form room (`/tenant/<id>/<room>`) to its tenant, with no `await`. A struct over
/// one locked dictionary: the registry's mutations go through its `mutating` members (so that
/// the registry's `didSet` still sees them), and a copy reads the same tenants.
public struct OpenTenants: Sendable {
    private final class Storage: Sendable {
        let tenants = Mutex<[String: Tenant]>([:])
    }

    private let storage = Storage()

    public init() {}

    /// The open tenant of `id`, if any.
    public subscript(id: String) -> Tenant? {
        get { self.storage.tenants.withLock { $0[id] } }
        set { self.storage.tenants.withLock { $0[id] = newValue } }
    }

    /// Removes the tenant of `id`.
    /// - Returns: the tenant removed.
    @discardableResult
    public mutating func removeValue(forKey id: String) -> Tenant? {
        self.storage.tenants.withLock { $0.removeValue(forKey: id) }
    }

    /// Removes every tenant.
    public mutating func removeAll() {
        self.storage.tenants.withLock { $0.removeAll() }
    }

    /// The open tenants now.
    public var values: [Tenant] { self.storage.tenants.withLock { Array($0.values) } }

    /// The open tenants now, with their ids.
    public var all: [(id: String, tenant: Tenant)] {
        self.storage.tenants.withLock { $0.map { ($0.key, $0.value) } }
    }

    public var count: Int { self.storage.tenants.withLock { $0.count } }
}
