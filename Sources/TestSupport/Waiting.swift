import Foundation

/// A condition that did not come true in time.
public struct TimedOut: Error, CustomStringConvertible {
    /// What was waited for.
    public var description: String
}

/// Polls `condition` every 10 ms until it holds or `seconds` pass: a wait on a condition with a
/// deadline, never a fixed sleep.
/// - Throws: ``TimedOut`` when the deadline passes first.
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

/// ``waitUntil(_:seconds:_:)`` for async conditions.
public func waitUntil(
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
