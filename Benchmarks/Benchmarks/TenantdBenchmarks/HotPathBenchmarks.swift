import Benchmark
import Foundation
import Logging
import NIOCore
import RESP
import TenantEngine
import TenantMetrics
import WAL

/// The hot paths of a request, each on 1,000 requests' worth of work, with committed malloc
/// thresholds (`Thresholds/`, checked by `.ci/run`): a change that allocates more per request
/// fails the build. Wall clock and instructions are reported, not checked: these machines are
/// shared and noisy.
/// The configuration of a hot path whose p90 malloc count may exceed its threshold by at most
/// `tolerance` mallocs and by at most 25% (a check fails past either bound): about 10% on the
/// larger ones, as mallocs on other threads (the log's flush, continuations) vary a little
/// from run to run.
func hotPathConfiguration(tolerating tolerance: Int, iterations: Int = 200) -> Benchmark.Configuration {
    Benchmark.Configuration(
        metrics: [.wallClock, .instructions, .mallocCountTotal, .throughput],
        maxDuration: .seconds(3),
        maxIterations: iterations,
        thresholds: [.mallocCountTotal: .init(relative: [.p90: 25.0], absolute: [.p90: tolerance])]
    )
}

/// 1,000 corpus messages, the texts of the hot paths' POSTs.
let hotPathTexts: [[UInt8]] = (0..<1000).map {
    corpusMessages.isEmpty ? Array("hello".utf8) : corpusMessages[$0 % corpusMessages.count]
}

/// POSTs of `texts` to `room` as redis-py pipelines them, in one byte array.
func pipelinedPosts(_ texts: [[UInt8]], room: String) -> [UInt8] {
    var pipelined: [UInt8] = []
    for text in texts {
        pipelined +=
            Array("*3\r\n$4\r\nPOST\r\n$\(room.utf8.count)\r\n\(room)\r\n$\(text.count)\r\n".utf8) + text + [13, 10]
    }
    return pipelined
}

let hotPathBenchmarks: @Sendable () -> Void = {
    let configuration = { (tolerance: Int) in hotPathConfiguration(tolerating: tolerance) }
    let texts = hotPathTexts

    // 1,000 POSTs as redis-py pipelines them.
    let requests = ByteBuffer(bytes: pipelinedPosts(texts, room: "general"))
    Benchmark("HotPath.RESPParse.1000POSTs", configuration: configuration(100)) { benchmark in
        var parser = RESPRequestParser()
        var buffer = requests
        var commands = 0
        benchmark.startMeasurement()
        while case .command(let words) = parser.next(&buffer) { commands += words.count }
        benchmark.stopMeasurement()
        blackHole(commands)
    }

    // 1,000 POST replies and a HISTORY page of 50 messages, encoded into one buffer as a batch is.
    let page = RESPValue.array(
        texts.prefix(50).enumerated().map { index, text in
            .array([
                .integer(Int64(index + 1)), .integer(1_795_839_516_759), .bulkString("alice"),
                .bulkString(String(decoding: text, as: UTF8.self)),
            ])
        }
    )
    Benchmark("HotPath.RESPEncode.1000Replies", configuration: configuration(8)) { benchmark in
        var buffer = ByteBuffer()
        benchmark.startMeasurement()
        for seq in 1...1000 { RESPEncoder.encode(.integer(Int64(seq)), version: .resp2, into: &buffer) }
        RESPEncoder.encode(page, version: .resp3, into: &buffer)
        benchmark.stopMeasurement()
        blackHole(buffer.readableBytes)
    }

    // 1,000 appends to a log and one wait for the last: framing, lz4, CRC and the group commit.
    Benchmark("HotPath.WALAppend.1000Records", configuration: configuration(8)) { benchmark in
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = try WALWriter(directory: directory, lastLSN: 0, configuration: WALConfiguration(fsync: .no))
        benchmark.startMeasurement()
        var last: UInt64 = 0
        for text in texts { last = try writer.append(type: 4, payload: text) }
        try await writer.waitUntilDurable(last)
        benchmark.stopMeasurement()
        try await writer.close()
    }

    // 1,000 POSTs through a tenant in process, as the dispatcher makes them: authorize, quota,
    // seq, log append, then the commit of the last (fsync no).
    Benchmark("HotPath.TenantPost.1000POSTs", configuration: configuration(40)) { benchmark in
        let data = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: data) }
        var engine = EngineConfiguration(dataDirectory: data, fsync: .no)
        engine.adminToken = String(repeating: "b", count: 40)
        engine.defaultPlan = .enterprise
        let registry = TenantRegistry(configuration: engine, logger: Logger(label: "bench"))
        try await registry.bootstrap()
        let created = try await registry.createTenant(name: "Bench", subdomain: "bench", plan: nil, owner: "alice")
        let tenant = try await registry.tenant(id: created.metadata.tenantID)
        let alice = try await tenant.authenticate(user: "alice", token: created.ownerToken)
        let strings = texts.map { String(decoding: $0, as: UTF8.self) }
        benchmark.startMeasurement()
        var last: PostTicket?
        for text in strings { last = try await tenant.post(alice, room: "general", text: text) }
        if let last { blackHole(try await tenant.commit(last)) }
        benchmark.stopMeasurement()
        await registry.shutdown(checkpoint: false)
    }

    // What a request costs the metrics: its command's latency (two clock reads, two atomic adds),
    // its tenant's request and reply counters, 100,000 times. The threshold is the harness's own
    // constant (the same 16 at 1,000 requests): nothing per request.
    let counters = TenantCounterBook().counters(for: "bench")
    let latency = LatencyHistogram()
    Benchmark("HotPath.RequestCounting.100000Requests", configuration: configuration(4)) { benchmark in
        benchmark.startMeasurement()
        for index in 0..<100_000 {
            let start = LatencyHistogram.now()
            counters.requested(bytes: 40 + index & 63)
            counters.replied(bytes: 7)
            latency.record(since: start)
        }
        benchmark.stopMeasurement()
        blackHole(latency.snapshot().count)
    }
}
