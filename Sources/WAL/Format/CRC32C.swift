import CCRC32C

/// CRC-32C (Castagnoli) with LevelDB's masking for checksums stored next to the data they cover:
/// the SSE4.2 `crc32` instruction through a tiny C shim where the CPU has it, slice-by-8 tables
/// elsewhere.
public enum CRC32C {
    /// True when the hardware instruction is used.
    public static let usesHardware = tenantd_crc32c_hardware_available() != 0

    private static let polynomial: UInt32 = 0x82F6_3B78
    private static let maskDelta: UInt32 = 0xA282_EAD8

    /// Eight 256-entry tables, flattened: table k at `k * 256`.
    private static let tables: [UInt32] = {
        var tables = [UInt32](repeating: 0, count: 8 * 256)
        for index in 0..<256 {
            var crc = UInt32(index)
            for _ in 0..<8 {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ polynomial : crc >> 1
            }
            tables[index] = crc
        }
        for index in 0..<256 {
            var crc = tables[index]
            for slice in 1..<8 {
                crc = tables[Int(crc & 0xFF)] ^ (crc >> 8)
                tables[slice * 256 + index] = crc
            }
        }
        return tables
    }()

    /// The CRC-32C of `bytes`, continuing from `crc` (0 for a fresh checksum).
    /// - Complexity: O(n), eight bytes a step.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        if usesHardware {
            return ~tenantd_crc32c_hardware(~crc, bytes.baseAddress, bytes.count)
        }
        return softwareChecksum(bytes, continuing: crc)
    }

    /// The slice-by-8 table implementation (used where the CPU lacks SSE4.2, and to test the other).
    public static func softwareChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        var crc = ~crc
        var index = 0
        let count = bytes.count
        guard let base = bytes.baseAddress else { return ~crc }
        tables.withUnsafeBufferPointer { table in
            let t = table.baseAddress!
            while count - index >= 8 {
                let low = base.loadUnaligned(fromByteOffset: index, as: UInt32.self).littleEndian ^ crc
                let high = base.loadUnaligned(fromByteOffset: index + 4, as: UInt32.self).littleEndian
                crc =
                    t[7 * 256 + Int(low & 0xFF)] ^ t[6 * 256 + Int((low >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((low >> 16) & 0xFF)] ^ t[4 * 256 + Int(low >> 24)]
                    ^ t[3 * 256 + Int(high & 0xFF)] ^ t[2 * 256 + Int((high >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((high >> 16) & 0xFF)] ^ t[Int(high >> 24)]
                index += 8
            }
            while index < count {
                crc = t[Int((crc ^ UInt32(base.load(fromByteOffset: index, as: UInt8.self))) & 0xFF)] ^ (crc >> 8)
                index += 1
            }
        }
        return ~crc
    }

    /// The CRC-32C of a byte array.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// Masks a CRC before it is stored, so a CRC of data that itself holds CRCs stays strong.
    public static func mask(_ crc: UInt32) -> UInt32 {
        ((crc >> 15) | (crc << 17)) &+ maskDelta
    }

    /// Reverses ``mask(_:)``.
    public static func unmask(_ masked: UInt32) -> UInt32 {
        let rotated = masked &- maskDelta
        return (rotated >> 17) | (rotated << 15)
    }
}
