import Logging
import NIOCore
import RESP
import Synchronization
import TenantEngine

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One client connection: a reader that runs commands in order and a writer that sends their
/// replies in the same order, each POST's reply once its record is durable.
///
/// The split lets a pipelining client have many POSTs in one group commit.
struct Connection {
    /// A reply in the queue: encoded where the command ran, so the queue knows its size.
    enum Slot: Sendable {
        case bytes(ByteBuffer)
        case post(Tenant, PostTicket, RESPVersion)
        case close(ByteBuffer)
        /// Every request the connection took so far (this many) is answered above: the handler may
        /// run the next ones on `lane`.
        case idle(Int, SyncLane?)
        /// Completed when the handler has it: every reply before it has reached the handler.
        case barrier(EventLoopPromise<Void>)
        /// Replies, the last of them HELLO's, after which the client speaks `version`: written
        /// with the marker that tells the handler (``ConnectionOutput/pushVersion(_:)``) in one
        /// write, so that no push comes between.
        case versionChange(ByteBuffer, RESPVersion)

        /// The memory it holds, for the queue's byte bound.
        var weight: Int {
            switch self {
            case .bytes(let buffer), .close(let buffer), .versionChange(let buffer, _): return buffer.capacity
            case .post: return 16
            case .idle, .barrier: return 0
            }
        }

        static func value(_ value: RESPValue, _ version: RESPVersion) -> Slot {
            .bytes(Self.encoded(value, version))
        }

        static func close(_ value: RESPValue, _ version: RESPVersion) -> Slot {
            .close(Self.encoded(value, version))
        }

        private static func encoded(_ value: RESPValue, _ version: RESPVersion) -> ByteBuffer {
            Self.tightened(RESPEncoder.encode(value, version: version))
        }

        /// Replies' bytes in a buffer of about their size: a buffer grown by doubling while a
        /// 4 MiB reply was encoded would hold 8 MiB for as long as the reply waits.
        static func tightened(_ buffer: ByteBuffer) -> ByteBuffer {
            guard buffer.capacity - buffer.readableBytes > 64 << 10 else { return buffer }
            var tight = ByteBuffer()
            tight.reserveCapacity(buffer.readableBytes)
            tight.writeImmutableBuffer(buffer)
            return tight
        }
    }

    let id: Int64
    let channel: NIOAsyncChannel<[RESPRequest], ConnectionOutput>
    let gate: RequestGate
    /// Where the tenants' pushes for this connection go: its handler.
    let pushes: PushSink
    let transport: ConnectionTransport
    let dispatcher: CommandDispatcher
    /// Its socket, when it may move to its tenant's loop (``ConnectionSocket``).
    var socket: ConnectionSocket? = nil
    /// The session it had before it moved here.
    var carried: CarriedSession? = nil

    init(
        id: Int64,
        channel: NIOAsyncChannel<[RESPRequest], ConnectionOutput>,
        gate: RequestGate,
        pushes: PushSink,
        transport: ConnectionTransport,
        dispatcher: CommandDispatcher,
        socket: ConnectionSocket? = nil,
        carried: CarriedSession? = nil
    ) {
        self.id = id
        self.channel = channel
        self.gate = gate
        self.pushes = pushes
        self.transport = transport
        self.dispatcher = dispatcher
        self.socket = socket
        self.carried = carried
    }

    init(_ new: NewConnection, dispatcher: CommandDispatcher) {
        self.init(
            id: new.id,
            channel: new.channel,
            gate: new.gate,
            pushes: new.pushes,
            transport: new.transport,
            dispatcher: dispatcher,
            socket: new.socket,
            carried: new.carried
        )
    }

    /// Runs the connection until it closes or moves: a writer task sends the replies, while
    /// this task reads the requests (``ConnectionReader``).
    /// - Returns: whether it moved to another event loop (its new channel goes on with it).
    func run() async -> Bool {
        // The session, taken as the connection closes, when its handler moves it.
        var moving: (ConnectionSocket.Handover, CarriedSession)?
        defer {
            if let (handover, session) = moving, let socket = self.socket {
                socket.mover.move(handover, session: session)
            }
        }
        do {
            try await self.channel.executeThenClose { inbound, outbound in
                let queue = self.makeQueue()
                let memory = self.dispatcher.clientMemory
                let pushes = self.pushes
                self.register(holding: queue, in: memory)
                defer { memory.unregister(id: self.id, holding: queue.heldBytes + pushes.stopAccounting()) }
                // The barrier the task waits at, failed if the connection closes first.
                let barrier = Barrier(channel: self.channel.channel)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        defer { queue.writerStopped() }
                        try await Self.write(queue, to: outbound)
                    }
                    defer { queue.finish() }
                    var reader = ConnectionReader(connection: self, queue: queue, barrier: barrier)
                    defer { moving = reader.end() }
                    let open = await reader.restoreCarried()
                    for try await batch in inbound {
                        guard open, await reader.run(batch) else { break }
                    }
                    // Before the writer drains (a client that does not read may take its time).
                    reader.leaveTenant()
                    queue.finish()
                    try await group.waitForAll()
                }
            }
        } catch {
            self.dispatcher.logger.debug("connection \(self.id) ended: \(error)")
        }
        return moving != nil
    }

    /// The queue of the connection's replies, as narrow as an anonymous client's until AUTH.
    private func makeQueue() -> ReplyQueue<Slot> {
        let gate = self.gate
        return ReplyQueue<Slot>(
            limit: FixedLimits.unauthenticatedReplyWindow,
            byteLimit: FixedLimits.unauthenticatedReplyWindowBytes,
            pubSubLimit: self.dispatcher.limits.pubSub,
            normalLimit: self.dispatcher.limits.normal,
            onNormalLimit: { [logger = self.dispatcher.logger, id = self.id, memory = self.dispatcher.clientMemory] in
                memory.countEviction()
                logger.warning(
                    "client disconnected: over client-output-buffer-limit normal",
                    metadata: ["event": "client_evicted", "connection": "\(id)"]
                )
            },
            memory: self.dispatcher.clientMemory,
            // A client that does not read its replies holds no share of its tenant.
            onReaderWait: { gate.park() },
            onReaderResume: { gate.unpark() }
        )
    }

    /// Counts what the connection holds against `maxmemory-clients`, which closes it when it
    /// holds the most.
    private func register(holding queue: ReplyQueue<Slot>, in memory: ClientMemoryGuard) {
        let (connectionID, nioChannel, logger, pushes) = (
            self.id, self.channel.channel, self.dispatcher.logger, self.pushes
        )
        pushes.account(to: memory)
        memory.register(
            id: connectionID,
            holder: .init(
                bytes: { queue.heldBytes + pushes.heldBytes },
                close: {
                    logger.warning(
                        "client disconnected: over maxmemory-clients, it held the most unsent replies",
                        metadata: ["event": "client_evicted", "connection": "\(connectionID)"]
                    )
                    nioChannel.close(promise: nil)
                }
            )
        )
    }

    /// The lane the session allows now: authenticated, not subscribed, no fair shares, not
    /// closing, and a tenant context (if any: the operator may have none and name tenants in
    /// path-form rooms) placed on an event loop (this connection's, or another, reached in one hop
    /// per batch).
    func lane(for session: Session, state: ConnectionState) -> SyncLane? {
        guard state.allowsLane, let principal = session.principal else { return nil }
        if let tenant = session.tenant {
            guard !tenant.isClosed, tenant.placement is any EventLoop else { return nil }
        }
        return SyncLane(
            connectionID: self.id,
            tenant: session.tenant,
            tenantID: session.tenantID,
            principal: principal,
            version: session.version,
            pathForm: self.pathForm,
            subscriber: session.subscriber
        )
    }

    /// What the lane does with path-form rooms, as ``CommandDispatcher/target(room:principal:session:)``
    /// does.
    private var pathForm: SyncLane.PathForm {
        let registry = self.dispatcher.registry
        guard registry.configuration.idSources.contains(.path) else { return .plain }
        guard registry.impliedTenantID == nil else { return .decline }
        return .resolve(registry.openTenants)
    }

    /// The POSTs of two arguments starting at `start` in `batch`, as arguments; empty when the
    /// request there is not one.
    static func postRun(_ batch: [RESPRequest], from start: Int) -> [Arguments] {
        var run: [Arguments] = []
        var index = start
        while index < batch.endIndex, case .command(let words) = batch[index], words.count == 3,
            CommandTable.isPost(words[0]),
            let arguments = try? Arguments(words)
        {
            run.append(arguments)
            index += 1
        }
        return run
    }

    /// ECHO returns its argument's bytes as they are, UTF-8 or not, as Redis does (`redis-cli --pipe`
    /// ends its input with an ECHO of random bytes and waits for them).
    static func echo(_ words: [ByteBuffer], session: Session) -> RESPValue? {
        guard words.count == 2, !session.isInSubscribedMode, CommandTable.isEcho(words[0]) else { return nil }
        return .bulkBytes(Array(words[1].readableBytesView))
    }

    /// Writes the replies in order, every batch the reader queued in one write; a POST's once it is durable.
    private static func write(
        _ queue: ReplyQueue<Slot>,
        to outbound: NIOAsyncChannelOutboundWriter<ConnectionOutput>
    )
        async throws
    {
        while let slots = await queue.popAll() {
            var buffer = ByteBuffer()
            var index = slots.startIndex
            while index < slots.endIndex {
                if buffer.readableBytes >= FixedLimits.writeChunk {
                    // Large replies go out as they are encoded: a batch of big HISTORY replies never
                    // sits in memory whole, and a client that does not read stops the writer here.
                    try await outbound.write(.bytes(buffer))
                    buffer = ByteBuffer()
                }
                switch slots[index] {
                case .bytes(let bytes) where bytes.readableBytes >= FixedLimits.writeChunk:
                    // A large reply goes out as it is, not copied into the batch.
                    if buffer.readableBytes > 0 { try await outbound.write(.bytes(buffer)) }
                    try await outbound.write(.bytes(bytes))
                    buffer = ByteBuffer()
                    index += 1
                case .bytes(let bytes):
                    buffer.writeImmutableBuffer(bytes)
                    index += 1
                case .post(let tenant, _, _):
                    let end = Self.endOfPostRun(slots, from: index, tenant: tenant)
                    await Self.commitPosts(slots[index..<end], tenant: tenant, into: &buffer)
                    index = end
                case .close(let bytes):
                    buffer.writeImmutableBuffer(bytes)
                    try await Self.write(&buffer, then: .closing, to: outbound)
                    return
                case .versionChange(let bytes, let version):
                    buffer.writeImmutableBuffer(bytes)
                    try await Self.write(&buffer, then: .pushVersion(version), to: outbound)
                    index += 1
                case .barrier(let promise):
                    do {
                        try await Self.write(&buffer, then: .barrier(promise), to: outbound)
                    } catch {
                        promise.fail(error)
                        throw error
                    }
                    index += 1
                case .idle(let taken, let lane):
                    try await Self.write(&buffer, then: .idle(handed: taken, lane: lane), to: outbound)
                    index += 1
                }
            }
            if buffer.readableBytes > 0 { try await outbound.write(.bytes(buffer)) }
        }
    }

    /// Writes the replies in `buffer`, then `marker`, in one write (nothing comes between them at
    /// the handler), and empties `buffer`.
    private static func write(
        _ buffer: inout ByteBuffer,
        then marker: ConnectionOutput,
        to outbound: NIOAsyncChannelOutboundWriter<ConnectionOutput>
    ) async throws {
        if buffer.readableBytes > 0 {
            try await outbound.write(contentsOf: [.bytes(buffer), marker])
        } else {
            try await outbound.write(marker)
        }
        buffer = ByteBuffer()
    }

    /// The end of the run of POSTs to `tenant` starting at `start`.
    private static func endOfPostRun(_ slots: [Slot], from start: Int, tenant: Tenant) -> Int {
        var end = start + 1
        while end < slots.endIndex, case .post(let next, _, _) = slots[end], next === tenant { end += 1 }
        return end
    }

    /// Replies to a run of POSTs to one tenant. Their records are in one log in lsn order, so the
    /// last one durable means all of them are: one wait for the whole run. If the log failed, each
    /// is answered on its own (those durable before the failure still get their seq).
    private static func commitPosts(_ run: ArraySlice<Slot>, tenant: Tenant, into buffer: inout ByteBuffer) async {
        guard case .post(_, let last, _) = run.last else { return }
        let start = buffer.writerIndex
        defer {
            ServerStats.shared.sent(buffer.writerIndex - start)
            tenant.counters.replied(bytes: buffer.writerIndex - start)
        }
        let allDurable = (try? await tenant.commit(last)) != nil
        for slot in run {
            guard case .post(_, let ticket, let version) = slot else { continue }
            let value: RESPValue
            if allDurable {
                value = .integer(Int64(ticket.seq))
            } else {
                do {
                    value = .integer(Int64(try await tenant.commit(ticket)))
                } catch {
                    value = .reply(for: error)
                }
            }
            RESPEncoder.encode(value, version: version, into: &buffer)
        }
    }
}
