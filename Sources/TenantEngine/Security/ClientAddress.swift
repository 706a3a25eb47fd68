#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What rate limits count a client by.
public enum ClientAddress {
    /// The key of a client address for rate limits: an IPv4 address as it is, an IPv6 address by
    /// its /64 (what one subscriber usually holds whole), an IPv4-mapped IPv6 address as its IPv4
    /// address; anything else (a Unix socket, an unparsable text) as it is.
    /// - Parameter address: the address in text form (`127.0.0.1`, `2001:db8::1`).
    public static func rateKey(_ address: String) -> String {
        guard address.contains(":") else { return address }
        var raw = in6_addr()
        let parsed = address.withCString { inet_pton(AF_INET6, $0, &raw) }
        guard parsed == 1 else { return address }
        let bytes = withUnsafeBytes(of: &raw) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            return bytes[12..<16].map(String.init).joined(separator: ".")
        }
        let prefix = stride(from: 0, to: 8, by: 2).map { index in
            String(UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1]), radix: 16)
        }
        return prefix.joined(separator: ":") + "::/64"
    }
}
