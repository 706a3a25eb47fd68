// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

var package = Package(
    name: "tenantd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tenantd", targets: ["tenantd"]),
        .executable(name: "tenantctl", targets: ["tenantctl"]),
        .library(name: "TenantEngine", targets: ["TenantEngine"]),
        .library(name: "TenantServer", targets: ["TenantServer"]),
        .library(name: "WAL", targets: ["WAL"]),
        .library(name: "LZ4", targets: ["LZ4"]),
        .library(name: "RESP", targets: ["RESP"]),
        .library(name: "TenantMetrics", targets: ["TenantMetrics"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        .systemLibrary(
            name: "CLZ4",
            pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"])]
        ),
        .target(name: "LZ4", dependencies: ["CLZ4"]),
        .target(name: "CCRC32C"),
        .target(name: "CPOSIX"),
        .target(name: "TenantMetrics"),
        .target(
            name: "WAL",
            dependencies: [
                "LZ4",
                "CCRC32C",
                "CPOSIX",
                "TenantMetrics",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "RESP",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio")
            ]
        ),
        .target(
            name: "TenantEngine",
            dependencies: [
                "WAL",
                "LZ4",
                "TenantMetrics",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "TenantServer",
            dependencies: [
                "CPOSIX",
                "TenantEngine",
                "RESP",
                "TenantMetrics",
                "WAL",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "tenantd",
            dependencies: [
                "RESP",
                "TenantServer",
                "TenantEngine",
                "TenantMetrics",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "tenantctl",
            dependencies: [
                "WAL",
                "TenantEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(
            name: "TestSupport",
            dependencies: ["RESP", "WAL"]
        ),
        // The Swift tests' fixtures that need the engine and the server (a registry, an owner, the
        // server in-process): one definition each, shared by every suite.
        .target(
            name: "EngineTestSupport",
            dependencies: [
                "TenantEngine", "TenantServer", "TestSupport", "WAL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "tenantdTests",
            dependencies: [
                "LZ4", "WAL", "RESP", "TenantEngine", "TenantServer", "TenantMetrics", "TestSupport",
                "EngineTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ]
)

/// The request path's targets, whose release builds leave out the dynamic exclusivity checks
/// (docs/architecture.md, "Decisions taken from the code": about a sixth of a pipelined PING's
/// CPU). Debug builds, the tests, the fuzzers and the crash trials keep them.
let uncheckedExclusivity: Set<String> = ["RESP", "TenantServer", "TenantEngine", "WAL", "LZ4", "TenantMetrics"]

for target in package.targets where target.type != .system && target.name != "CCRC32C" {
    target.swiftSettings = (target.swiftSettings ?? []) + swiftSettings
    if uncheckedExclusivity.contains(target.name) {
        target.swiftSettings! += [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
    }
}
