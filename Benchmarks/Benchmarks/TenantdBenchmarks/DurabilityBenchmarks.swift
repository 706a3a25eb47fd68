import Benchmark
import Foundation
import Logging
@_spi(Fuzzing) import TenantEngine
import WAL

/// Appends `count` records under `policy`: all queued then awaited together (group commit), or
/// each awaited before the next is appended (one write, and under `always` one fdatasync, each).
func appendRecords(count: Int, policy: FsyncPolicy, groupCommit: Bool) async throws {
    let directory = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let writer = try WALWriter(directory: directory, lastLSN: 0, configuration: WALConfiguration(fsync: policy))
    if groupCommit {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<count {
                let lsn = try writer.append(type: 4, payload: corpusMessages[index % corpusMessages.count])
                group.addTask { try await writer.waitUntilDurable(lsn) }
            }
            try await group.waitForAll()
        }
    } else {
        for index in 0..<count {
            let lsn = try writer.append(type: 4, payload: corpusMessages[index % corpusMessages.count])
            try await writer.waitUntilDurable(lsn)
        }
    }
    try await writer.close()
}

/// A data directory holding one tenant with `messages` messages, with or without a checkpoint.
func tenantWithMessages(_ messages: Int, checkpoint: Bool) async throws -> (data: String, path: String) {
    let data = temporaryDirectory()
    var configuration = EngineConfiguration(dataDirectory: data, fsync: .no)
    configuration.adminToken = String(repeating: "b", count: 40)
    configuration.defaultPlan = .enterprise
    configuration.checkpointBytes = 1 << 40
    let registry = TenantRegistry(configuration: configuration, logger: Logger(label: "bench"))
    try await registry.bootstrap()
    let created = try await registry.createTenant(name: "Bench", subdomain: "bench", plan: nil, owner: "alice")
    let tenant = try await registry.tenant(id: created.metadata.tenantID)
    let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
    var last: PostTicket?
    for index in 0..<messages {
        let text = String(decoding: corpusMessages[index % corpusMessages.count], as: UTF8.self)
        last = try await tenant.post(alice, room: "room\(index % 10)", text: text)
    }
    if let last { _ = try await tenant.commit(last) }
    if checkpoint { try await tenant.checkpoint() }
    await registry.shutdown(checkpoint: false)
    return (data, configuration.layout.tenantDirectory(created.metadata.tenantID))
}

let durabilityBenchmarks: @Sendable () -> Void = {
    let ioConfiguration = Benchmark.Configuration(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        maxDuration: .seconds(10),
        maxIterations: 10
    )
    for policy in FsyncPolicy.allCases {
        for groupCommit in [true, false] {
            let name = "Append 1,000 records, fsync=\(policy), " + (groupCommit ? "group commit" : "one at a time")
            Benchmark(name, configuration: ioConfiguration) { _ in
                try await appendRecords(count: 1000, policy: policy, groupCommit: groupCommit)
            }
        }
    }

    for checkpoint in [true, false] {
        let name =
            "Activate a tenant with 100,000 messages, " + (checkpoint ? "from its checkpoint" : "from its log alone")
        Benchmark(name, configuration: ioConfiguration) { benchmark in
            let (data, path) = try await tenantWithMessages(100_000, checkpoint: checkpoint)
            defer { try? FileManager.default.removeItem(atPath: data) }
            var configuration = EngineConfiguration(dataDirectory: data, fsync: .no)
            configuration.defaultPlan = .enterprise
            for _ in benchmark.scaledIterations {
                benchmark.startMeasurement()
                let tenant = try await Tenant.open(
                    path: path,
                    configuration: configuration,
                    logger: Logger(label: "bench")
                )
                benchmark.stopMeasurement()
                await tenant.close(checkpoint: false)
            }
        }
    }

    for tenants in [1, 100_000] {
        // The directories are made once (setup), then each iteration is one start-up.
        let data = NSTemporaryDirectory() + "/tenantd-bench-startup-\(tenants)-\(getpid())"
        Benchmark(
            "Start-up with \(tenants) tenant directories",
            configuration: ioConfiguration,
            closure: { benchmark in
                var configuration = EngineConfiguration(dataDirectory: data, fsync: .no)
                configuration.adminToken = String(repeating: "b", count: 40)
                for _ in benchmark.scaledIterations {
                    let registry = TenantRegistry(configuration: configuration, logger: Logger(label: "bench"))
                    benchmark.startMeasurement()
                    try await registry.bootstrap()
                    benchmark.stopMeasurement()
                    let count = await registry.tenantCount
                    precondition(count == tenants, "bootstrap found \(count) tenants")
                    await registry.shutdown()
                }
            },
            setup: { try makeDataDirectory(data, tenants: tenants) },
            teardown: { try? FileManager.default.removeItem(atPath: data) }
        )
    }
}

/// `tenants` tenant directories and the catalog that lists them, written directly (creating
/// 100,000 tenants through the engine would fsync for an hour).
func makeDataDirectory(_ data: String, tenants: Int) throws {
    var entries: [TenantMetadata] = []
    entries.reserveCapacity(tenants)
    for index in 0..<tenants {
        let id = String(format: "%08x", index)
        try FileManager.default.createDirectory(atPath: data + "/tenant_\(id)/wal", withIntermediateDirectories: true)
        entries.append(
            TenantMetadata(
                tenantID: id,
                name: "t",
                subdomain: "s\(id)",
                plan: .free,
                limits: Plan.free.defaultLimits,
                now: 1
            )
        )
    }
    try FileManager.default.createDirectory(atPath: data + "/catalog", withIntermediateDirectories: true)
    try Data(try DecoderEntryPoints.encodeCatalog(entries)).write(
        to: URL(fileURLWithPath: data + "/catalog/tenants.bin")
    )
    try Data("database\n".utf8).write(to: URL(fileURLWithPath: data + "/strategy"))
}
