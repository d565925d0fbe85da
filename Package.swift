// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "UDSKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "UDSKit", targets: ["UDSKit"]),
        .library(name: "UDSKitServiceLifecycle", targets: ["UDSKitServiceLifecycle"]),
        .executable(name: "uds", targets: ["uds"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Only for UDSKitServiceLifecycle, so the core keeps its few dependencies.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // Only for `swift package generate-documentation`; nothing links it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CUDSKit"),
        .target(
            name: "UDSKit",
            dependencies: [
                "CUDSKit",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: asyncOnTheCallersExecutor
        ),
        .target(
            name: "UDSKitServiceLifecycle",
            dependencies: [
                "UDSKit",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: asyncOnTheCallersExecutor
        ),
        .executableTarget(
            name: "uds",
            dependencies: [
                "UDSKit",
                "CUDSKit",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: asyncOnTheCallersExecutor
        ),
        // Child processes for both test targets, without Foundation's Process.
        .target(name: "CChildProcesses", path: "Tests/CChildProcesses"),
        .target(name: "ChildProcesses", dependencies: ["CChildProcesses"], path: "Tests/ChildProcesses"),
        .testTarget(
            name: "UDSKitTests",
            dependencies: ["UDSKit", "ChildProcesses", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "UDSKitServiceLifecycleTests",
            dependencies: [
                "UDSKitServiceLifecycle",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "udsTests",
            dependencies: ["uds", "ChildProcesses"],
            exclude: ["Peers"]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// Async functions that are not isolated run on their caller's executor
// instead of hopping to the generic one at every call: for a task that runs
// on an event loop, each hop asked the runtime for the task's preferred
// executor under its status-record lock, per read and per wait (SE-0461).
var asyncOnTheCallersExecutor: [SwiftSetting] { [.enableUpcomingFeature("NonisolatedNonsendingByDefault")] }
