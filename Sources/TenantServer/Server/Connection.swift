import Logging
import NIOCore
import RESP
import TenantEngine

/// One client connection: a reader that runs commands in order and a writer that sends their
/// replies in the same order, each POST's reply once its record is durable.
///
/// The split lets a pipelining client have many POSTs in one group commit.
struct Connection {
    enum Slot: Sendable {
        case value(RESPValue, RESPVersion)
        case post(Tenant, PostTicket, RESPVersion)
        case close(RESPValue, RESPVersion)
    }

    let id: Int64
    let channel: NIOAsyncChannel<RESPRequest, ByteBuffer>
    let dispatcher: CommandDispatcher

    func run() async {
        do {
            try await self.channel.executeThenClose { inbound, outbound in
                let (slots, continuation) = AsyncStream<Slot>.makeStream()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        try await Self.write(slots, to: outbound)
                    }
                    defer { continuation.finish() }
                    var session = Session(id: self.id)
                    reading: for try await request in inbound {
                        switch request {
                        case .protocolError(let message):
                            continuation.yield(.close(.error("PROTO \(message)"), session.version))
                            break reading
                        case .tooBig(let message):
                            continuation.yield(.value(.error("TOOBIG \(message)"), session.version))
                        case .command(let words):
                            let outcome: CommandOutcome
                            do {
                                outcome = await self.dispatcher.handle(try Arguments(words), session: &session)
                            } catch {
                                outcome = .reply(.reply(for: error))
                            }
                            switch outcome {
                            case .reply(let value):
                                continuation.yield(.value(value, session.version))
                            case .post(let tenant, let ticket):
                                continuation.yield(.post(tenant, ticket, session.version))
                            case .replyAndClose(let value):
                                continuation.yield(.close(value, session.version))
                                break reading
                            }
                        }
                    }
                    continuation.finish()
                    try await group.waitForAll()
                }
            }
        } catch {
            self.dispatcher.logger.debug("connection \(self.id) ended: \(error)")
        }
    }

    /// Writes each reply in order; a POST's once it is durable.
    private static func write(
        _ slots: AsyncStream<Slot>,
        to outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws {
        for await slot in slots {
            var buffer = ByteBuffer()
            switch slot {
            case .value(let value, let version):
                RESPEncoder.encode(value, version: version, into: &buffer)
            case .post(let tenant, let ticket, let version):
                let value: RESPValue
                do {
                    value = .integer(Int64(try await tenant.commit(ticket)))
                } catch {
                    value = .reply(for: error)
                }
                RESPEncoder.encode(value, version: version, into: &buffer)
            case .close(let value, let version):
                RESPEncoder.encode(value, version: version, into: &buffer)
                try await outbound.write(buffer)
                return
            }
            try await outbound.write(buffer)
        }
    }
}
