import TenantEngine

extension Message {
    /// The pub/sub payload: `{"seq":..,"ts":..,"user":"..","text":".."}`.
    var jsonPayload: String {
        "{\"seq\":\(self.seq),\"ts\":\(self.timestamp),\"user\":\(Self.jsonString(self.user)),\"text\":\(Self.jsonString(self.text))}"
    }

    /// A JSON string literal, escaped as RFC 8259 asks.
    static func jsonString(_ text: String) -> String {
        var out = "\""
        out.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
        return out
    }
}
