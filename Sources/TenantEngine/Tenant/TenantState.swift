/// A tenant's data as its log describes it: what replaying the log, or applying live changes, builds.
struct TenantState: Sendable {
    var metadata: TenantMetadata?
    var users: [String: User] = [:]
    var rooms: [String: Room] = [:]
    var messageCount = 0
    var messageDays = MessageDayCounter()
    /// Messages accepted but not yet applied, by room, in seq order after the room's applied
    /// ones: a checkpoint written once the log is durable past them writes them too.
    var pending: [String: [Message]] = [:]
    /// Where the rooms' sealed chunks go when the server is over its memory budget (nil: they stay).
    var cold: ColdStore?

    /// Applies one record.
    /// - Throws: when the record contradicts the state (a seq out of order).
    mutating func apply(_ record: TenantRecord) throws {
        switch record {
        case .metadata(let metadata):
            self.metadata = metadata
        case .userPut(let user):
            self.users[user.name] = user
        case .userDelete(let name):
            self.users[name] = nil
        case .message(let room, let message):
            let taken = try self.rooms[room, default: Room()].apply(message)
            self.cold?.took(taken, room: room, rooms: &self.rooms)
            self.messageCount += 1
            self.messageDays.count(timestamp: message.timestamp)
        case .tenantDeleted:
            // The registry drops the tenant; a tenant's own state never sees this record.
            break
        }
    }
}

/// Messages per UTC day, kept for the current day only.
struct MessageDayCounter: Sendable, Hashable {
    static let millisecondsPerDay: Int64 = 86_400_000

    private(set) var day: Int64 = 0
    private(set) var count: Int64 = 0

    mutating func count(timestamp: Int64) {
        let day = timestamp / Self.millisecondsPerDay
        if day > self.day {
            self.day = day
            self.count = 0
        }
        if day == self.day { self.count += 1 }
    }

    /// Messages in the UTC day holding `now`.
    func count(onDayOf now: Int64) -> Int64 {
        now / Self.millisecondsPerDay == self.day ? self.count : 0
    }
}
