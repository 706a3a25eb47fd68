/// The rules names follow on the wire and on disk.
public enum Names {
    /// Labels that never name a tenant, as a subdomain or a host name's first label.
    public static let reservedSubdomains: Set<String> = [
        "www", "api", "admin", "app", "mail", "smtp", "ftp", "static", "assets", "cdn", "status", "help",
        "support", "docs", "blog", "dashboard", "login", "auth", "root", "system", "internal", "tenant",
        "tenants", "metrics",
    ]

    /// Tenant ids: 1-50 bytes of `[a-z0-9-]`.
    public static func isValidTenantID(_ id: String) -> Bool {
        let utf8 = id.utf8
        return (1...50).contains(utf8.count) && utf8.allSatisfy { isLowerAlnum($0) || $0 == UInt8(ascii: "-") }
    }

    /// User names: 1-64 bytes of `[A-Za-z0-9._-]`, never `..`.
    public static func isValidUserName(_ name: String) -> Bool {
        let utf8 = name.utf8
        return (1...64).contains(utf8.count)
            && utf8.allSatisfy {
                isAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
            }
            && !name.contains("..") && name != "."
    }

    /// Room names: 1-128 bytes of `[A-Za-z0-9._:-]`, never `..` (no name may look like a path step).
    /// One pass over the bytes: it runs for every POST.
    public static func isValidRoom(_ room: String) -> Bool {
        var room = room
        return room.withUTF8 { bytes in
            guard (1...128).contains(bytes.count), bytes.count > 1 || bytes[0] != UInt8(ascii: ".") else {
                return false
            }
            var previousDot = false
            for byte in bytes {
                let dot = byte == UInt8(ascii: ".")
                if dot && previousDot { return false }
                previousDot = dot
                guard
                    isAlnum(byte) || dot || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
                        || byte == UInt8(ascii: ":")
                else { return false }
            }
            return true
        }
    }

    /// Subdomains: `^[a-z0-9-]+$`, 3-63 bytes, no leading or trailing hyphen, not reserved.
    /// - Returns: nil when valid, else why not.
    public static func subdomainProblem(_ subdomain: String) -> String? {
        let utf8 = subdomain.utf8
        guard (3...63).contains(utf8.count) else { return "subdomain must be 3 to 63 bytes" }
        guard utf8.allSatisfy({ isLowerAlnum($0) || $0 == UInt8(ascii: "-") }) else {
            return "subdomain must match ^[a-z0-9-]+$"
        }
        guard utf8.first != UInt8(ascii: "-"), utf8.last != UInt8(ascii: "-") else {
            return "subdomain may not start or end with a hyphen"
        }
        guard !reservedSubdomains.contains(subdomain) else { return "subdomain '\(subdomain)' is reserved" }
        return nil
    }

    /// Tenant display names: 1-200 bytes of UTF-8 without control characters.
    public static func isValidTenantName(_ name: String) -> Bool {
        (1...200).contains(name.utf8.count)
            && !name.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    private static func isLowerAlnum(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private static func isAlnum(_ byte: UInt8) -> Bool {
        isLowerAlnum(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
    }
}
