import DequeModule
import Synchronization
import TenantEngine

/// Slows down failed authentication, per connection and per client address (an IPv6 /64 counts
/// as one address), as a growing delay before the `WRONGPASS` reply, then a disconnect.
///
/// Each address's failures decay at ``decayPerSecond``: a person mistyping a token meets no delay,
/// a guesser soon waits seconds per guess and is cut off.
final class AuthThrottle: Sendable {
    /// What to do with a failed attempt.
    struct Decision: Equatable {
        /// How long to wait before answering.
        var delay: Duration
        /// Close the connection after the answer.
        var disconnect: Bool
    }

    /// The longest delay.
    static let maxDelay = Duration.seconds(3)

    private let addresses = Mutex<[String: (failures: Double, updated: ContinuousClock.Instant)]>([:])

    /// Records a failed attempt.
    /// - Parameters:
    ///   - address: the client's address (normalised here).
    ///   - connectionFailures: the connection's failures, this one included.
    /// - Returns: the delay and whether to disconnect.
    func failed(address: String, connectionFailures: Int, now: ContinuousClock.Instant = .now) -> Decision {
        let key = ClientAddress.rateKey(address)
        let recent = self.addresses.withLock { addresses -> Double in
            var entry = addresses[key] ?? (0, now)
            // Capped: an address's failures are forgotten within seconds once the guessing stops.
            entry.failures = min(FixedLimits.authAddressMaxFailures + 1, Self.decayed(entry, now: now) + 1)
            entry.updated = now
            addresses[key] = entry
            if addresses.count > FixedLimits.authMaxAddresses {
                // Forget the addresses whose failures have decayed; if too many are still recent
                // (a flood from very many addresses), forget them all rather than grow.
                addresses = addresses.filter { Self.decayed($0.value, now: now) >= 1 }
                if addresses.count > FixedLimits.authMaxAddresses / 2 { addresses = [key: entry] }
            }
            return entry.failures
        }
        let connectionExcess = connectionFailures - FixedLimits.authConnectionFreeFailures
        let addressExcess = Int(min(64, max(0, (recent - FixedLimits.authAddressFreeFailures).rounded(.up))))
        let delay = max(
            Self.delay(excess: connectionExcess, base: .milliseconds(50)),
            Self.delay(excess: addressExcess, base: .milliseconds(50))
        )
        return Decision(
            delay: delay,
            disconnect: connectionFailures >= FixedLimits.authConnectionMaxFailures
                || recent > FixedLimits.authAddressMaxFailures
        )
    }

    private struct Slots {
        var held = 0
        var waiters = Deque<CheckedContinuation<Void, Never>>()
    }

    private let slots = Mutex<[String: Slots]>([:])

    /// Waits out a failed attempt's `delay` in one of its address's ``failureSlots``.
    func waitOut(_ delay: Duration, address: String) async {
        guard delay > .zero else { return }
        let key = ClientAddress.rateKey(address)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.slots.withLock { slots -> Bool in
                var entry = slots[key] ?? Slots()
                defer { slots[key] = entry }
                if entry.held < FixedLimits.authFailureSlots {
                    entry.held += 1
                    return true
                }
                entry.waiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
        try? await Task.sleep(for: delay)
        let next = self.slots.withLock { slots -> CheckedContinuation<Void, Never>? in
            guard var entry = slots[key] else { return nil }
            defer { slots[key] = entry.held == 0 && entry.waiters.isEmpty ? nil : entry }
            if let waiter = entry.waiters.popFirst() { return waiter }  // the slot passes on
            entry.held -= 1
            return nil
        }
        next?.resume()
    }

    /// Failed attempts waiting for a slot now, every address together.
    var waitingFailures: Int { self.slots.withLock { $0.values.reduce(0) { $0 + $1.waiters.count } } }

    /// The addresses tracked now.
    var trackedAddresses: Int { self.addresses.withLock { $0.count } }

    /// An address's failures at `now`, forgotten at ``decayPerSecond`` since they were counted.
    private static func decayed(
        _ entry: (failures: Double, updated: ContinuousClock.Instant),
        now: ContinuousClock.Instant
    ) -> Double {
        let elapsed = entry.updated.duration(to: now) / .seconds(1)
        return max(0, entry.failures - max(0, elapsed) * FixedLimits.authDecayPerSecond)
    }

    private static func delay(excess: Int, base: Duration) -> Duration {
        guard excess > 0 else { return .zero }
        let doubled = base * (1 << min(excess - 1, 16))
        return min(doubled, Self.maxDelay)
    }
}
