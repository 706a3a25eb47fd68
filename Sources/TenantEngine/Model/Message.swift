/// One chat message.
public struct Message: Sendable, Hashable {
    /// Its place in its room, from 1, gap-free.
    public var seq: UInt64
    /// Milliseconds since the Unix epoch.
    public var timestamp: Int64
    public var user: String
    public var text: String

    /// Creates a message.
    public init(seq: UInt64, timestamp: Int64, user: String, text: String) {
        self.seq = seq
        self.timestamp = timestamp
        self.user = user
        self.text = text
    }
}
