import Dispatch
import EngineTestSupport
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import RESP
import ServiceLifecycle
import Synchronization
import TenantEngine
import TestSupport
import Testing
import WAL

@testable import TenantServer

#if canImport(Glibc)
import Glibc
#endif

/// The handler's lane states alone, on an `EmbeddedChannel` (no lane: the task's markers only).
@Suite("Request handler states")
struct RequestHandlerStateTests {
    @Test func theTaskMarkerReturnsTheHandlerToTheSynchronousStateOnlyWhenItAnsweredEverything() throws {
        let gate = RequestGate(bound: 1 << 20)
        gate.authenticated()
        let handler = RESPRequestHandler(limits: RESPRequestParser.Limits(), gate: gate)
        let channel = EmbeddedChannel(handler: handler)
        guard case .synchronous(nil) = handler.laneState else {
            Issue.record("starts synchronous, without a lane")
            return
        }
        try channel.writeInbound(ByteBuffer(string: "PING\r\nPING\r\n"))
        #expect(try channel.readInbound(as: [RESPRequest].self)?.count == 2)
        guard case .handedOver(2, fromLane: false) = handler.laneState else {
            Issue.record("two requests handed over: \(handler.laneState)")
            return
        }
        // The task's reply bytes pass through; a marker for fewer requests changes nothing.
        try channel.writeOutbound(ConnectionOutput.bytes(ByteBuffer(string: "+PONG\r\n")))
        try channel.writeOutbound(ConnectionOutput.idle(handed: 1, lane: nil))
        guard case .handedOver(2, _) = handler.laneState else {
            Issue.record("a stale marker moved the state: \(handler.laneState)")
            return
        }
        try channel.writeInbound(ByteBuffer(string: "PING\r\n"))
        #expect(try channel.readInbound(as: [RESPRequest].self)?.count == 1)
        try channel.writeOutbound(ConnectionOutput.idle(handed: 2, lane: nil))
        guard case .handedOver(3, _) = handler.laneState else {
            Issue.record("the marker came before the third request was answered: \(handler.laneState)")
            return
        }
        try channel.writeOutbound(ConnectionOutput.bytes(ByteBuffer(string: "+PONG\r\n+PONG\r\n")))
        try channel.writeOutbound(ConnectionOutput.idle(handed: 3, lane: nil))
        guard case .synchronous(nil) = handler.laneState else {
            Issue.record("every request answered: \(handler.laneState)")
            return
        }
        var written = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { written.writeBuffer(&chunk) }
        #expect(String(buffer: written) == "+PONG\r\n+PONG\r\n+PONG\r\n", "the markers write nothing")
        _ = try channel.finish()
    }
}

/// What the lane asks a tenant of a POST it ran: answered once durable, or failed, never left
/// waiting.
@Suite("POST outcomes")
struct PostOutcomeTests {
    @Test func aPostWhoseLogFailedAfterItsTenantClosedIsAnsweredWithAnError() async throws {
        try await TemporaryDirectory.with { dir in
            let disk = FaultyFileSystem()
            let (registry, created, _) = try await FaultTests.registryOverFaultyDisk(dir.path, disk: disk)
            let tenant = try await registry.tenant(id: created.metadata.tenantID)
            let kept = try await tenant.post(.operator, room: "general", text: "kept")
            _ = try await tenant.commit(kept)
            #expect(await tenant.outcome(of: kept).map { try? $0.get() } == .some(kept.seq))
            let lost = try await tenant.post(.operator, room: "general", text: "lost")
            #expect(await tenant.outcome(of: lost) == nil, "not written yet: it waits")
            // The tenant closes (passivation, REOPEN, a move) and its log's last write fails:
            // the tenant is closed, not failed, and the POST must still get an answer.
            disk.fail(.write, errno: EIO, times: 100)
            await tenant.close(checkpoint: false)
            guard case .failure(let error)? = await tenant.outcome(of: lost) else {
                Issue.record(
                    "a POST whose write failed is left waiting: \(String(describing: await tenant.outcome(of: lost)))"
                )
                return
            }
            #expect(error.kind == .storageFailed)
            await registry.shutdown()
        }
    }
}
