/// A token bucket per client address for TENANT SIGNUP.
struct SignupLimiter {
    private var buckets: [String: (tokens: Double, updated: Int64)] = [:]
    let perMinute: Int

    init(perMinute: Int) {
        self.perMinute = perMinute
    }

    /// Whether `address` has a token at `now`, without taking it.
    /// - Returns: nil when it has, else the seconds until the next one.
    func peek(_ address: String, now: Int64) -> Int64? {
        var copy = self
        return copy.take(address, now: now)
    }

    /// Takes a token for `address` at `now` (ms).
    /// - Returns: nil when allowed, else the seconds until the next token.
    mutating func take(_ address: String, now: Int64) -> Int64? {
        let capacity = Double(self.perMinute)
        let perMillisecond = capacity / 60_000
        var bucket = self.buckets[address] ?? (capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + Double(max(0, now - bucket.updated)) * perMillisecond)
        bucket.updated = now
        defer {
            self.buckets[address] = bucket
            if self.buckets.count > 100_000 {
                self.buckets = self.buckets.filter { $0.value.tokens < capacity }
            }
        }
        guard bucket.tokens >= 1 else { return Int64(((1 - bucket.tokens) / perMillisecond / 1000).rounded(.up)) }
        bucket.tokens -= 1
        return nil
    }
}
