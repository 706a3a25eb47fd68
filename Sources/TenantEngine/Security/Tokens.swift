import Crypto

/// Bearer tokens: 32 random bytes shown once as 64 hex characters, stored only as their SHA-256.
public enum Tokens {
    /// A new random token.
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: 32)
        for index in bytes.indices { bytes[index] = generator.next() }
        return hex(bytes)
    }

    /// The size of a stored token hash (SHA-256): a log or checkpoint holding another is refused.
    public static let hashSize = 32

    /// The SHA-256 of a token, as stored.
    public static func hash(_ token: String) -> [UInt8] {
        Array(SHA256.hash(data: Array(token.utf8)))
    }

    /// Compares two hashes in time that does not depend on where they differ.
    public static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }

    /// Lowercase hex.
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A random tenant id: 8 lowercase hex characters, as the seed makes them.
    public static func newTenantID() -> String {
        var generator = SystemRandomNumberGenerator()
        return hex((0..<4).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }
}
