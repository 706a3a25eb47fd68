/// Writes the Prometheus text exposition format (version 0.0.4): families with their `# HELP`
/// and `# TYPE` lines, samples with escaped label values, histograms from a
/// ``LatencyHistogram``. For the series tenantd renders itself (per tenant, lock-free
/// histograms), beside those swift-prometheus renders.
public struct PrometheusText: Sendable {
    public enum Kind: String, Sendable {
        case counter, gauge, histogram, untyped
    }

    /// The text so far.
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// Starts a family: its HELP and TYPE lines. Every sample of the family must follow.
    public mutating func family(_ name: String, _ kind: Kind, help: String) {
        self.append("# HELP \(name) \(Self.escapedHelp(help))\n# TYPE \(name) \(kind.rawValue)\n")
    }

    /// One sample line.
    public mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        self.append(name)
        self.appendLabels(labels)
        self.append(" \(Self.format(value))\n")
    }

    /// One sample line of an integer value.
    public mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Int64) {
        self.append(name)
        self.appendLabels(labels)
        self.append(" \(value)\n")
    }

    /// One sample line of a counter's value.
    public mutating func sample(_ name: String, _ labels: [(String, String)] = [], _ value: UInt64) {
        self.append(name)
        self.appendLabels(labels)
        self.append(" \(value)\n")
    }

    /// A histogram's samples (`_bucket` per bound and `+Inf`, `_sum`, `_count`) under `labels`.
    public mutating func histogram(_ name: String, _ labels: [(String, String)], _ snapshot: LatencyHistogram.Snapshot)
    {
        for (bound, count) in zip(LatencyHistogram.bounds, snapshot.cumulative) {
            self.sample(name + "_bucket", labels + [("le", Self.format(bound))], count)
        }
        self.sample(name + "_bucket", labels + [("le", "+Inf")], snapshot.count)
        self.sample(name + "_sum", labels, snapshot.sumSeconds)
        self.sample(name + "_count", labels, snapshot.count)
    }

    /// Appends text rendered elsewhere (swift-prometheus's), unchanged.
    public mutating func append(rendered: [UInt8]) {
        self.bytes += rendered
    }

    private mutating func append(_ string: String) {
        self.bytes.append(contentsOf: string.utf8)
    }

    private mutating func appendLabels(_ labels: [(String, String)]) {
        guard !labels.isEmpty else { return }
        self.append("{")
        for (index, (name, value)) in labels.enumerated() {
            if index > 0 { self.append(",") }
            self.append("\(name)=\"\(Self.escapedLabelValue(value))\"")
        }
        self.append("}")
    }

    /// A float as Prometheus reads it (`+Inf`, `-Inf`, `NaN` by name).
    public static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }

    /// A label value: backslash, double quote and newline escaped.
    public static func escapedLabelValue(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == 0x5C || $0 == 0x22 || $0 == 0x0A }) else { return value }
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }

    /// HELP text: backslash and newline escaped.
    public static func escapedHelp(_ text: String) -> String {
        text.replacing("\\", with: "\\\\").replacing("\n", with: "\\n")
    }

    /// `text` with a `# HELP` line before each `# TYPE` line that has none, from `help` (by
    /// family name). swift-prometheus gives the series made through swift-metrics no HELP, and
    /// `promtool check metrics` requires one.
    public static func addingHelp(to text: [UInt8], help: (String) -> String?) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(text.count + 4096)
        var previousWasHelp = false
        for line in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.starts(with: "# TYPE ".utf8), !previousWasHelp {
                let name = line.dropFirst(7).prefix { $0 != UInt8(ascii: " ") }
                if let text = help(String(decoding: name, as: UTF8.self)) {
                    output.append(contentsOf: "# HELP ".utf8)
                    output.append(contentsOf: name)
                    output.append(UInt8(ascii: " "))
                    output.append(contentsOf: Self.escapedHelp(text).utf8)
                    output.append(UInt8(ascii: "\n"))
                }
            }
            previousWasHelp = line.starts(with: "# HELP ".utf8)
            output.append(contentsOf: line)
            output.append(UInt8(ascii: "\n"))
        }
        // split keeps a last empty piece after the final newline: one newline too many.
        if text.last == UInt8(ascii: "\n") || text.isEmpty { output.removeLast() }
        return output
    }
}

extension PrometheusText {
    /// Starts a family as its declaration says: its `# HELP` and `# TYPE` lines.
    public mutating func family(_ family: MetricFamily) {
        self.family(family.name, family.kind, help: family.help)
    }
}
