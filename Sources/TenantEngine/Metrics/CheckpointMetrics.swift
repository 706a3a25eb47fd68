import Metrics
import TenantMetrics

/// Checkpoints written and failed (`tenantd_checkpoints_total{outcome}`), and how long each took
/// (`tenantd_checkpoint_seconds`): a tenant's own, or a shared log's.
public enum CheckpointMetrics {
    public static let duration = LatencyHistogram()
    private static let written = Counter(label: MetricFamily.checkpoints.name, dimensions: [("outcome", "written")])
    private static let failed = Counter(label: MetricFamily.checkpoints.name, dimensions: [("outcome", "failed")])

    /// Runs `write`, counting and timing it.
    static func measure<T>(_ write: () async throws -> T) async throws -> T {
        let start = LatencyHistogram.now()
        do {
            let result = try await write()
            Self.duration.record(since: start)
            Self.written.increment()
            return result
        } catch {
            Self.failed.increment()
            throw error
        }
    }
}
