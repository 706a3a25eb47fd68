import Benchmark
import Foundation
import LZ4
import NIOCore
import RESP
import WAL

/// The chat corpus's messages, in file order.
let corpusMessages: [[UInt8]] = {
    let path = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Corpus/chatterbot-conversations.jsonl").path
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    var messages: [[UInt8]] = []
    for line in text.split(separator: "\n") {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
            let list = object["messages"] as? [String]
        else { continue }
        messages += list.map { Array($0.utf8) }
    }
    return messages
}()

func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "/tenantd-bench-\(UUID().uuidString)"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Appends every corpus message once through the group-commit writer and waits for the last.
func appendCorpus(to directory: String, policy: FsyncPolicy) async throws {
    let writer = try WALWriter(directory: directory, lastLSN: 0, configuration: WALConfiguration(fsync: policy))
    var last: UInt64 = 0
    for message in corpusMessages { last = try writer.append(type: 4, payload: message) }
    try await writer.waitUntilDurable(last)
    try await writer.close()
}

let benchmarks: @Sendable () -> Void = {
    durabilityBenchmarks()
    hotPathBenchmarks()
    laneBenchmarks()
    let metrics: [BenchmarkMetric] = [.wallClock, .instructions, .mallocCountTotal, .throughput]
    Benchmark.defaultConfiguration = .init(metrics: metrics, maxDuration: .seconds(5), maxIterations: 50)

    // Baseline for the WAL figures: the same bytes written with plain write(2), no framing, no lz4.
    Benchmark("Baseline: write(2) of the corpus text") { benchmark in
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fd = open(directory + "/raw", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        benchmark.startMeasurement()
        for message in corpusMessages { _ = message.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
        benchmark.stopMeasurement()
        close(fd)
    }

    Benchmark("WAL append of the corpus, fsync=no") { benchmark in
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        benchmark.startMeasurement()
        try await appendCorpus(to: directory, policy: .no)
        benchmark.stopMeasurement()
    }

    Benchmark("WAL recovery of the corpus") { benchmark in
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await appendCorpus(to: directory, policy: .no)
        benchmark.startMeasurement()
        var bytes = 0
        _ = try WALReader(directory: directory).replay(repair: false) { _, _, payload in bytes += payload.count }
        benchmark.stopMeasurement()
        blackHole(bytes)
    }

    Benchmark("CRC32C of 1 MiB", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let bytes = [UInt8](repeating: 0xA5, count: 1 << 20)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(bytes.withUnsafeBytes { CRC32C.checksum($0) })
        }
    }

    Benchmark("LZ4 linked-block compression of the corpus") { benchmark in
        let compressor = LZ4StreamCompressor(maxBlockSize: 1 << 20)
        var output: [UInt8] = []
        output.reserveCapacity(2 << 20)
        benchmark.startMeasurement()
        for message in corpusMessages {
            try message.withUnsafeBytes { _ = try compressor.compress($0, appendingTo: &output) }
        }
        benchmark.stopMeasurement()
        blackHole(output.count)
    }

    Benchmark("RESP parse of 10,000 pipelined POSTs") { benchmark in
        var bytes: [UInt8] = []
        for index in 0..<10_000 {
            let text = corpusMessages.isEmpty ? Array("hello".utf8) : corpusMessages[index % corpusMessages.count]
            bytes += Array("*3\r\n$4\r\nPOST\r\n$7\r\ngeneral\r\n$\(text.count)\r\n".utf8) + text + [13, 10]
        }
        let input = ByteBuffer(bytes: bytes)
        benchmark.startMeasurement()
        var parser = RESPRequestParser()
        var buffer = input
        var commands = 0
        while case .command = parser.next(&buffer) { commands += 1 }
        benchmark.stopMeasurement()
        blackHole(commands)
    }
}
