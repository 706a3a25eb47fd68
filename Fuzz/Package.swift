// swift-tools-version:6.1
import PackageDescription

// libFuzzer targets for every decoder of bytes from outside: the wire (RESP requests) and the
// disk (WAL segments, checkpoints, the catalog). Build and run them with `Fuzz/run`.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

var package = Package(
    name: "tenantd-fuzz",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "FuzzRESPRequest", targets: ["FuzzRESPRequest"]),
        .executable(name: "FuzzWALSegment", targets: ["FuzzWALSegment"]),
        .executable(name: "FuzzCheckpoint", targets: ["FuzzCheckpoint"]),
        .executable(name: "FuzzCatalog", targets: ["FuzzCatalog"]),
        .executable(name: "FuzzReplicationStream", targets: ["FuzzReplicationStream"]),
    ],
    dependencies: [
        .package(name: "tenantd", path: "../"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
    ],
    targets: [
        .target(
            name: "FuzzSupport",
            dependencies: [
                .product(name: "WAL", package: "tenantd"),
                .product(name: "LZ4", package: "tenantd"),
            ]
        ),
        .executableTarget(
            name: "FuzzRESPRequest",
            dependencies: [
                .product(name: "RESP", package: "tenantd"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "FuzzWALSegment",
            dependencies: [
                "FuzzSupport",
                .product(name: "WAL", package: "tenantd"),
            ]
        ),
        .executableTarget(
            name: "FuzzCheckpoint",
            dependencies: [
                "FuzzSupport",
                .product(name: "TenantEngine", package: "tenantd"),
            ]
        ),
        .executableTarget(
            name: "FuzzReplicationStream",
            dependencies: [
                .product(name: "TenantEngine", package: "tenantd")
            ]
        ),
        .executableTarget(
            name: "FuzzCatalog",
            dependencies: [
                "FuzzSupport",
                .product(name: "TenantEngine", package: "tenantd"),
            ]
        ),
    ]
)

for target in package.targets {
    target.swiftSettings = (target.swiftSettings ?? []) + swiftSettings
}
