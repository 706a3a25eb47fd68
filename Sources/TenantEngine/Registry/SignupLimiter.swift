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

/// TENANT SIGNUP's limits: a rate per client address (an IPv6 /64 counting as one) and one for
/// all clients together (`TENANT_SIGNUPS_PER_MINUTE`, `TENANT_SIGNUPS_PER_MINUTE_TOTAL`).
struct SignupGate {
    private var perAddress: SignupLimiter
    private var total: SignupLimiter

    init(perMinute: Int, perMinuteTotal: Int) {
        self.perAddress = SignupLimiter(perMinute: perMinute)
        self.total = SignupLimiter(perMinute: perMinuteTotal)
    }

    /// Takes one signup for `address` at `now` (ms).
    /// - Throws: QUOTA with the limit and the seconds to wait; the server-wide rate is checked
    ///   first, so that refused addresses do not use it up.
    mutating func admit(address: String, now: Int64) throws {
        if let retry = self.total.peek("", now: now) {
            let limit = self.total.perMinute
            throw TenantError(.quotaExceeded, "signups_per_minute_total \(limit)/\(limit) retry_after=\(retry)")
        }
        if let retry = self.perAddress.take(ClientAddress.rateKey(address), now: now) {
            let limit = self.perAddress.perMinute
            throw TenantError(.quotaExceeded, "signups_per_minute \(limit)/\(limit) retry_after=\(retry)")
        }
        _ = self.total.take("", now: now)
    }
}

/// The tenant ids and subdomains that creations, deletions and moves in flight hold, so that two
/// of them never take the same name or tenant at once.
struct Claims {
    private(set) var ids: Set<String> = []
    private(set) var subdomains: Set<String> = []

    /// Holds `id` (and `subdomain`) until ``release(id:subdomain:)``.
    mutating func claim(id: String, subdomain: String? = nil) {
        self.ids.insert(id)
        if let subdomain { self.subdomains.insert(subdomain) }
    }

    mutating func release(id: String, subdomain: String? = nil) {
        self.ids.remove(id)
        if let subdomain { self.subdomains.remove(subdomain) }
    }

    /// Holds a subdomain alone (a migration prepared here and not yet committed).
    mutating func claim(subdomain: String) { self.subdomains.insert(subdomain) }

    mutating func release(subdomain: String) { self.subdomains.remove(subdomain) }

    func holds(id: String) -> Bool { self.ids.contains(id) }
    func holds(subdomain: String) -> Bool { self.subdomains.contains(subdomain) }
}
