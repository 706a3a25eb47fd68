import TenantEngine

extension Message {
    /// The pub/sub payload: `{"seq":..,"ts":..,"user":"..","text":".."}`.
    var jsonPayload: String {
        "{\"seq\":\(self.seq),\"ts\":\(self.timestamp),\"user\":\(Self.jsonString(self.user)),\"text\":\(Self.jsonString(self.text))}"
    }

    /// A JSON string literal.
    static func jsonString(_ text: String) -> String {
        JSONString.quoted(text)
    }
}
