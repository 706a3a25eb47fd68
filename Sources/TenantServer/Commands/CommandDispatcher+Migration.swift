import Foundation
import RESP
import TenantEngine

extension CommandDispatcher {
    /// `TENANT MIGRATE <tenant-id> <host> <port> [AUTH <operator-token>]`: the tenant handed to
    /// another tenantd; the reply reports the copy and the pause.
    func migrate(_ arguments: Arguments) async throws -> RESPValue {
        guard arguments.count == 4 || arguments.count == 6 else { throw CommandError.wrongArity("tenant|migrate") }
        var token: String?
        if arguments.count == 6 {
            guard arguments.keyword(4) == "AUTH" else { throw CommandError.syntax }
            token = arguments[5]
        }
        let host = arguments[2]
        guard !host.isEmpty, host.utf8.count <= 253,
            host.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "/") })
        else { throw TenantError.invalid("host must be a host name or an address") }
        guard let port = Int(arguments[3]), (1...65535).contains(port) else {
            throw TenantError.invalid("port must be 1-65535")
        }
        guard let id = await self.registry.resolveAny(arguments[1]) else {
            throw TenantError.notFound("no tenant '\(arguments[1].prefix(64))'")
        }
        let report = try await self.registry.migrateTenant(id: id, host: host, port: port, token: token)
        return .map([
            ("tenant_id", .bulkString(report.tenantID)),
            ("target", .bulkString(report.target)),
            ("migration", .bulkString(report.migration)),
            ("rounds", .integer(Int64(report.rounds))),
            ("files", .integer(Int64(report.files))),
            ("bytes_sent", .integer(Int64(report.bytesSent))),
            ("pause_ms", .integer(report.pauseMilliseconds)),
            ("committed", .integer(report.committed ? 1 : 0)),
        ])
    }

    /// `TENANT RECEIVE <tenant-id> <migration-id> BEGIN|CHUNK|PREPARE|COMMIT|ABORT ...`: the
    /// destination's side of a migration (docs/protocol.md, "Moving a tenant to another server").
    func receive(_ arguments: Arguments) async throws -> RESPValue {
        guard arguments.count >= 4 else { throw CommandError.wrongArity("tenant|receive") }
        let id = arguments[1]
        let migration = arguments[2]
        switch arguments.keyword(3) {
        case "BEGIN":
            try arguments.expect(4...4, for: "tenant|receive|begin")
            let files = try await self.registry.receiveBegin(id: id, migration: migration)
            return .array(
                files.map { .array([.bulkString($0.path), .integer(Int64($0.size)), .integer(Int64($0.crc))]) }
            )
        case "CHUNK":
            // CHUNK <path> <offset> <crc32c> <base64 bytes>
            try arguments.expect(8...8, for: "tenant|receive|chunk")
            guard let offset = Int(arguments[5]), offset >= 0 else {
                throw TenantError.invalid("offset must be a non-negative integer")
            }
            guard let crc = UInt32(arguments[6]) else {
                throw TenantError.invalid("crc32c must be an integer of 32 bits")
            }
            guard let data = Data(base64Encoded: arguments[7]) else {
                throw TenantError.invalid("the chunk must be base64")
            }
            try await self.registry.receiveChunk(
                id: id,
                migration: migration,
                path: arguments[4],
                offset: offset,
                crc: crc,
                bytes: [UInt8](data)
            )
            return .ok
        case "PREPARE":
            // PREPARE <count> (<path> <size> <crc32c>)*
            guard arguments.count >= 5, let count = Int(arguments[4]), count >= 0, count <= 100_000,
                arguments.count == 5 + 3 * count
            else { throw CommandError.wrongArity("tenant|receive|prepare") }
            var manifest: [MigrationFile] = []
            manifest.reserveCapacity(count)
            for index in 0..<count {
                let base = 5 + 3 * index
                guard let size = Int(arguments[base + 1]), size >= 0, let crc = UInt32(arguments[base + 2]) else {
                    throw TenantError.invalid("the manifest's sizes and checksums must be integers")
                }
                manifest.append(MigrationFile(path: arguments[base], size: size, crc: crc))
            }
            try await self.registry.receivePrepare(id: id, migration: migration, manifest: manifest)
            return .ok
        case "COMMIT":
            try arguments.expect(4...4, for: "tenant|receive|commit")
            try await self.registry.receiveCommit(id: id, migration: migration)
            return .ok
        case "ABORT":
            try arguments.expect(4...4, for: "tenant|receive|abort")
            try await self.registry.receiveAbort(id: id, migration: migration)
            return .ok
        default:
            throw CommandError("unknown step '\(arguments[3].prefix(64))'. Try BEGIN|CHUNK|PREPARE|COMMIT|ABORT.")
        }
    }
}
