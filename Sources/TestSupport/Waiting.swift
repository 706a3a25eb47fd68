import Foundation

/// A condition that did not come true in time.
public struct TimedOut: Error, CustomStringConvertible {
    /// What was waited for.
    public var description: String
}

/// Polls `condition` every 10 ms until it holds or `seconds` pass: a wait on a condition with a
/// deadline, never a fixed sleep. It blocks its thread: async code uses the async variant, which
/// leaves the cooperative pool free for the server under test.
/// - Throws: ``TimedOut`` when the deadline passes first.
@available(*, noasync, message: "blocks a cooperative thread; use the async waitUntil")
public func waitUntil(
    _ what: @autoclosure () -> String,
    seconds: Double = 20,
    _ condition: () throws -> Bool
) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while true {
        if try condition() { return }
        guard Date() < deadline else {
            throw TimedOut(description: "timed out after \(seconds) s waiting for \(what())")
        }
        usleep(10_000)
    }
}

/// ``waitUntil(_:seconds:_:)`` for async code: it suspends between polls instead of blocking.
/// (A name of its own: with a synchronous closure the blocking overload would be chosen.)
public func waitUntilAsync(
    _ what: @autoclosure () -> String,
    seconds: Double = 20,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = Date().addingTimeInterval(seconds)
    while true {
        if try await condition() { return }
        guard Date() < deadline else {
            throw TimedOut(description: "timed out after \(seconds) s waiting for \(what())")
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// Runs blocking work (a ``RESPTestClient``'s calls) on a thread of its own, off Swift's
/// cooperative pool: an async test that blocked a pool thread could starve the server it tests,
/// which runs on the same pool (two threads on a two-core machine).
public func offThePool<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws -> Result {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Swift.Result { try body() }) }.start()
    }
}
