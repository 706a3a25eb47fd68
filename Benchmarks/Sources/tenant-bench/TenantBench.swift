import ArgumentParser
import DequeModule
import Foundation
import Histogram
import NIOCore
import NIOPosix

/// `tenant-bench`: C connections over T tenants against a running tenantd, a mix of requests
/// with P of them in flight per connection, for a duration; throughput and latency percentiles
/// (HdrHistogram, microseconds) as a table and as JSON. Texts come from the chat corpus.
///
///     tenant-bench --port 7379 --token $TOKEN --connections 50 --tenants 10 --pipeline 16 --seconds 10
@main
struct TenantBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant-bench",
        abstract: "Load a running tenantd with C connections over T tenants and report throughput and latency."
    )

    enum Mix: String, ExpressibleByArgument, CaseIterable {
        /// POST only.
        case post
        /// Four POSTs to one HISTORY LIMIT 50.
        case postHistory = "post-history"
        /// POST only, with `--subscribers-per-tenant` subscribers of each tenant's `general`
        /// counting the pushes.
        case subscribers
        /// The noisy neighbour: one quiet connection POSTs to tenant 0 one request at a time,
        /// first alone for the duration, then again while the other connections flood tenant 1
        /// with `--pipeline` requests in flight each; the quiet client's latency both ways.
        case noisy
    }

    @Option(help: "tenantd's address.") var host = "127.0.0.1"
    @Option(help: "tenantd's port.") var port = 7379
    @Option(help: "The operator token (TENANT_ADMIN_TOKEN), to create the tenants.") var token: String
    @Option(help: "Connections in all.") var connections = 50
    @Option(help: "Tenants the connections are spread over (created for the run).") var tenants = 1
    @Option(help: "post | post-history | subscribers | noisy") var mix = Mix.post
    @Option(help: "Requests in flight per connection.") var pipeline = 1
    @Option(help: "With --mix subscribers: subscribers per tenant (a post fans out to each).")
    var subscribersPerTenant = 1
    @Option(help: "Seconds of load.") var seconds = 10.0
    @Option(help: "The chat corpus (JSON lines with a messages array).") var corpus = TenantBench.defaultCorpus
    @Option(help: "Write the results as JSON to this file.") var json: String?
    @Flag(
        help: """
            Every connection authenticates as the operator and sends each request to the next tenant in             turn (the path form /tenant/<id>/general), so that all T tenants are active at once.
            """
    )
    var spread = false

    static var defaultCorpus: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Corpus/chatterbot-conversations.jsonl").path
    }

    func validate() throws {
        guard (1...10_000).contains(self.connections) else { throw ValidationError("connections: 1-10000") }
        guard (1...100_000).contains(self.tenants) else { throw ValidationError("tenants: 1-100000") }
        guard (1...1024).contains(self.pipeline) else { throw ValidationError("pipeline: 1-1024") }
        guard (1...1000).contains(self.subscribersPerTenant) else {
            throw ValidationError("subscribers-per-tenant: 1-1000")
        }
        guard self.seconds > 0 && self.seconds <= 3600 else { throw ValidationError("seconds: up to 3600") }
        if self.mix == .noisy {
            guard self.tenants >= 2, self.connections >= 2, !self.spread else {
                throw ValidationError("noisy: at least 2 tenants and 2 connections, no --spread")
            }
        }
    }

    func run() async throws {
        let texts = try Self.corpusTexts(self.corpus)
        let setup = try SyncClient(host: self.host, port: self.port)
        _ = try setup.call(["AUTH", "admin", self.token])
        let stamp = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        var owners: [(user: String, token: String)] = []
        var ids: [String] = []
        for index in 0..<self.tenants {
            let subdomain = "bench-\(stamp)-\(index)"
            let fields = try setup.call(["TENANT", "CREATE", subdomain, subdomain, "OWNER", "bench"])
            guard let position = fields.firstIndex(of: "owner_token"), position + 1 < fields.count,
                let idPosition = fields.firstIndex(of: "tenant_id"), idPosition + 1 < fields.count
            else {
                throw ValidationError("TENANT CREATE answered \(fields)")
            }
            owners.append(("bench@" + subdomain, fields[position + 1]))
            ids.append(fields[idPosition + 1])
        }
        setup.close()
        // Spread: the operator's connections name each request's tenant in its room.
        let rooms = self.spread ? ids.map { "/tenant/\($0)/general" } : ["general"]
        if self.spread { owners = [("admin", self.token)] }

        let group = MultiThreadedEventLoopGroup.singleton
        if self.mix == .noisy {
            try await self.runNoisy(group: group, owners: owners, texts: texts)
            return
        }
        let start = NIODeadline.now()
        let deadline = start + .nanoseconds(Int64(self.seconds * 1e9))
        var subscriberResults: [EventLoopFuture<Int>] = []
        if self.mix == .subscribers {
            for owner in owners {
                for _ in 0..<self.subscribersPerTenant {
                    let counter = SubscriberCounter(user: owner.user, token: owner.token, deadline: deadline)
                    subscriberResults.append(
                        try await self.connect(group: group, handler: counter, result: counter.done)
                    )
                }
            }
        }
        var results: [EventLoopFuture<ConnectionResult>] = []
        for index in 0..<self.connections {
            let owner = owners[index % owners.count]
            let load = LoadConnection(
                user: owner.user,
                token: owner.token,
                rooms: rooms,
                texts: texts,
                offset: index * 7919,
                mix: self.mix,
                pipeline: self.pipeline,
                deadline: deadline
            )
            results.append(try await self.connect(group: group, handler: load, result: load.done))
        }
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var replies = 0
        var errors = 0
        var firstError: String?
        for future in results {
            let result = try await future.get()
            histogram.add(result.histogram)
            replies += result.replies
            errors += result.errors
            firstError = firstError ?? result.firstError
        }
        let elapsed = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        var pushes = 0
        for future in subscriberResults { pushes += try await future.get() }
        self.report(
            histogram: histogram,
            replies: replies,
            errors: errors,
            firstError: firstError,
            pushes: pushes,
            elapsed: elapsed
        )
    }

    /// The noisy-neighbour mix: the quiet client alone, then under the flood.
    func runNoisy(group: any EventLoopGroup, owners: [(user: String, token: String)], texts: [String]) async throws {
        // The quiet client has a thread of its own: on the flood's event loops its replies would
        // wait behind the flood's in this process, and the figure would be the client's.
        let quietGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { quietGroup.shutdownGracefully { _ in } }
        func quietClient(until deadline: NIODeadline) async throws -> EventLoopFuture<ConnectionResult> {
            let quiet = LoadConnection(
                user: owners[0].user,
                token: owners[0].token,
                rooms: ["general"],
                texts: texts,
                offset: 0,
                mix: .post,
                pipeline: 1,
                deadline: deadline
            )
            return try await self.connect(group: quietGroup, handler: quiet, result: quiet.done)
        }
        let alone = try await quietClient(until: .now() + .nanoseconds(Int64(self.seconds * 1e9))).get()
        let start = NIODeadline.now()
        let deadline = start + .nanoseconds(Int64(self.seconds * 1e9))
        var flood: [EventLoopFuture<ConnectionResult>] = []
        for index in 1..<self.connections {
            let load = LoadConnection(
                user: owners[1].user,
                token: owners[1].token,
                rooms: ["general"],
                texts: texts,
                offset: index * 7919,
                mix: .post,
                pipeline: self.pipeline,
                deadline: deadline
            )
            flood.append(try await self.connect(group: group, handler: load, result: load.done))
        }
        // The flood runs a moment before the quiet client is measured under it.
        try await Task.sleep(for: .milliseconds(Int(min(1000, self.seconds * 100))))
        let underFlood = try await quietClient(until: deadline).get()
        var floodReplies = 0
        var errors = alone.errors + underFlood.errors
        for future in flood {
            let result = try await future.get()
            floodReplies += result.replies
            errors += result.errors
        }
        let elapsed = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        func ms(_ histogram: Histogram<UInt64>, _ percentile: Double) -> Double {
            Double(histogram.valueAtPercentile(percentile)) / 1000
        }
        let ratio = ms(underFlood.histogram, 99) / max(0.001, ms(alone.histogram, 99))
        print(
            "tenant-bench: noisy neighbour: 1 quiet connection (tenant 0, one POST at a time) alone, then with \(self.connections - 1) connections flooding tenant 1 (pipeline \(self.pipeline)), \(String(format: "%.1f", self.seconds)) s each"
        )
        print("| quiet client | replies | p50 ms | p90 ms | p99 ms | p99.9 ms |")
        print("|---|---|---|---|---|---|")
        for (name, result) in [("alone", alone), ("under the flood", underFlood)] {
            print(
                String(
                    format: "| %@ | %d | %.3f | %.3f | %.3f | %.3f |",
                    name,
                    result.replies,
                    ms(result.histogram, 50),
                    ms(result.histogram, 90),
                    ms(result.histogram, 99),
                    ms(result.histogram, 99.9)
                )
            )
        }
        print(
            String(
                format: "quiet p99 under the flood / alone: %.2f; the flood: %.0f POST/s; errors: %d",
                ratio,
                Double(floodReplies) / elapsed,
                errors
            )
        )
        guard let path = self.json else { return }
        func summary(_ result: ConnectionResult) -> [String: Any] {
            [
                "replies": result.replies, "p50": ms(result.histogram, 50), "p90": ms(result.histogram, 90),
                "p99": ms(result.histogram, 99), "p99.9": ms(result.histogram, 99.9),
            ]
        }
        let object: [String: Any] = [
            "mix": "noisy", "connections": self.connections, "pipeline": self.pipeline, "seconds": self.seconds,
            "quiet_alone_ms": summary(alone), "quiet_under_flood_ms": summary(underFlood), "p99_ratio": ratio,
            "flood_replies_per_second": Double(floodReplies) / elapsed, "errors": errors,
        ]
        let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        FileManager.default.createFile(atPath: path, contents: data)
    }

    func connect<Handler: ChannelInboundHandler & Sendable, Result>(
        group: any EventLoopGroup,
        handler: Handler,
        result: (EventLoop) -> EventLoopFuture<Result>
    ) async throws -> EventLoopFuture<Result> {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPReplyDecoder()))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: self.host, port: self.port).get()
        return result(channel.eventLoop)
    }

    func report(
        histogram: Histogram<UInt64>,
        replies: Int,
        errors: Int,
        firstError: String?,
        pushes: Int,
        elapsed: Double
    ) {
        func ms(_ percentile: Double) -> Double { Double(histogram.valueAtPercentile(percentile)) / 1000 }
        let rate = Double(replies) / elapsed
        print(
            "tenant-bench: \(self.connections) connections over \(self.tenants)\(self.spread ? " tenants (spread)" : " tenants"), \(self.mix.rawValue), pipeline \(self.pipeline), \(String(format: "%.1f", elapsed)) s"
        )
        print("| replies/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |")
        print("|---|---|---|---|---|---|---|")
        print(
            String(
                format: "| %.0f | %.3f | %.3f | %.3f | %.3f | %.3f | %d |",
                rate,
                ms(50),
                ms(90),
                ms(99),
                ms(99.9),
                Double(histogram.max) / 1000,
                errors
            )
        )
        if self.mix == .subscribers {
            print(String(format: "pushes delivered: %d (%.0f/s)", pushes, Double(pushes) / elapsed))
        }
        if let firstError { print("first error: \(firstError)") }
        guard let path = self.json else { return }
        let object: [String: Any] = [
            "connections": self.connections, "tenants": self.tenants, "spread": self.spread, "mix": self.mix.rawValue,
            "pipeline": self.pipeline, "seconds": elapsed, "replies": replies, "replies_per_second": rate,
            "errors": errors, "pushes": pushes, "subscribers_per_tenant": self.subscribersPerTenant,
            "latency_ms": [
                "p50": ms(50), "p90": ms(90), "p99": ms(99), "p99.9": ms(99.9), "max": Double(histogram.max) / 1000,
            ],
        ]
        let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        FileManager.default.createFile(atPath: path, contents: data)
    }

    static func corpusTexts(_ path: String) throws -> [String] {
        var texts: [String] = []
        for line in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            texts += ((object?["messages"] as? [String]) ?? []).filter { !$0.isEmpty && $0.utf8.count < 4096 }
        }
        guard !texts.isEmpty else { throw ValidationError("no texts in \(path)") }
        return texts
    }
}
