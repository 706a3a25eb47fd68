import WAL

/// The tenant's synchronous entry points for a caller already on its executor: the channel
/// handler of a connection on the tenant's event loop (the lane), and that loop's turn.
///
/// Each is `assumeIsolated` without a closure per call. The standard library's `assumeIsolated`
/// turns its operation into an escaping function for the call, and a closure that captures its
/// arguments then has its context put on the heap: one malloc per request, two per POST (the POST
/// and its outcome). Here each operation is an isolated function that captures nothing, written
/// once below (the compiler checks its body against the tenant's isolation) and converted once
/// to its non-isolated form, as `assumeIsolated` converts its operation; each entry point checks
/// the caller's executor the same way (`preconditionIsolated`: any other stops the process).
extension Tenant {
    /// POST (``post(_:room:text:)``) from the tenant's loop.
    public nonisolated func postOnLoop(_ principal: Principal, room: String, text: String) throws -> PostTicket {
        self.preconditionIsolated(Self.notOnLoop)
        return try OnLoop.post(self, principal, room, text)
    }

    /// HISTORY (``historyPage(_:room:after:before:limit:)``) from the tenant's loop.
    public nonisolated func historyPageOnLoop(
        _ principal: Principal,
        room: String,
        after: UInt64?,
        before: UInt64?,
        limit: Int
    ) throws -> MessagePage {
        self.preconditionIsolated(Self.notOnLoop)
        return try OnLoop.historyPage(self, principal, room, (after, before, limit))
    }

    /// ROOMS (``rooms(_:after:limit:)``) from the tenant's loop.
    public nonisolated func roomsOnLoop(_ principal: Principal, after: String?, limit: Int) throws -> [RoomSummary] {
        self.preconditionIsolated(Self.notOnLoop)
        return try OnLoop.rooms(self, principal, after, limit)
    }

    /// WHOAMI's role (``roleName(of:)``) from the tenant's loop.
    public nonisolated func roleNameOnLoop(of principal: Principal) throws -> String {
        self.preconditionIsolated(Self.notOnLoop)
        return try OnLoop.roleName(self, principal)
    }

    /// SUBSCRIBE (``subscribe(_:room:channel:subscriber:)``) from the tenant's loop: the
    /// `subscribed` event is delivered before it returns.
    public nonisolated func subscribeOnLoop(
        _ principal: Principal,
        room: String,
        channel: String,
        subscriber: any MessageSubscriber
    ) throws {
        self.preconditionIsolated(Self.notOnLoop)
        try OnLoop.subscribe(self, principal, (room, channel), subscriber)
    }

    /// A lane POST's outcome (``outcome(of:)``) from the tenant's loop.
    public nonisolated func outcomeOnLoop(of ticket: PostTicket) -> Result<UInt64, TenantError>? {
        self.preconditionIsolated(Self.notOnLoop)
        return OnLoop.outcome(self, ticket)
    }

    /// The turn's write (``writeTurn()``) from the tenant's loop.
    public nonisolated func writeTurnOnLoop() -> Bool {
        self.preconditionIsolated(Self.notOnLoop)
        return OnLoop.writeTurn(self)
    }

    /// The turn's settling after a write off the loop (``settle(_:)``), on the tenant's loop.
    public nonisolated func settleOnLoop(_ error: WALError?) -> TenantError? {
        self.preconditionIsolated(Self.notOnLoop)
        return OnLoop.settle(self, error)
    }

    private static let notOnLoop = "a tenant's synchronous entry points run only on its own event loop"
}

/// The operations, isolated to the tenant, converted once to plain functions of it.
/// `nonisolated(unsafe)`: constants that capture nothing, called only after the isolation check.
private enum OnLoop {
    typealias Page = (after: UInt64?, before: UInt64?, limit: Int)

    static func unisolated<F, G>(_ function: F, as type: G.Type) -> G {
        precondition(MemoryLayout<F>.size == MemoryLayout<G>.size, "the same function, without its isolation")
        return unsafeBitCast(function, to: type)
    }

    nonisolated(unsafe) static let post = unisolated(
        { (tenant: isolated Tenant, principal: Principal, room: String, text: String) throws -> PostTicket in
            try tenant.post(principal, room: room, text: text)
        },
        as: ((Tenant, Principal, String, String) throws -> PostTicket).self
    )

    nonisolated(unsafe) static let historyPage = unisolated(
        { (tenant: isolated Tenant, principal: Principal, room: String, page: Page) throws -> MessagePage in
            try tenant.historyPage(principal, room: room, after: page.after, before: page.before, limit: page.limit)
        },
        as: ((Tenant, Principal, String, Page) throws -> MessagePage).self
    )

    nonisolated(unsafe) static let rooms = unisolated(
        { (tenant: isolated Tenant, principal: Principal, after: String?, limit: Int) throws -> [RoomSummary] in
            try tenant.rooms(principal, after: after, limit: limit)
        },
        as: ((Tenant, Principal, String?, Int) throws -> [RoomSummary]).self
    )

    nonisolated(unsafe) static let roleName = unisolated(
        { (tenant: isolated Tenant, principal: Principal) throws -> String in try tenant.roleName(of: principal) },
        as: ((Tenant, Principal) throws -> String).self
    )

    nonisolated(unsafe) static let subscribe = unisolated(
        {
            (
                tenant: isolated Tenant,
                principal: Principal,
                names: (room: String, channel: String),
                subscriber: any MessageSubscriber
            )
                throws in
            try tenant.subscribe(principal, room: names.room, channel: names.channel, subscriber: subscriber)
        },
        as: ((Tenant, Principal, (room: String, channel: String), any MessageSubscriber) throws -> Void).self
    )

    nonisolated(unsafe) static let outcome = unisolated(
        { (tenant: isolated Tenant, ticket: PostTicket) -> Result<UInt64, TenantError>? in tenant.outcome(of: ticket) },
        as: ((Tenant, PostTicket) -> Result<UInt64, TenantError>?).self
    )

    nonisolated(unsafe) static let writeTurn = unisolated(
        { (tenant: isolated Tenant) -> Bool in tenant.writeTurn() },
        as: ((Tenant) -> Bool).self
    )

    nonisolated(unsafe) static let settle = unisolated(
        { (tenant: isolated Tenant, error: WALError?) -> TenantError? in tenant.settle(error) },
        as: ((Tenant, WALError?) -> TenantError?).self
    )
}
