// swift-tools-version:6.0
// The comparison servers, kept out of the main package so that UDSKit never
// depends on SwiftNIO. `run.py` builds and runs everything.
import PackageDescription

let package = Package(
    name: "UDSKitBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
    ],
    targets: [
        // The concurrency runtime's own cost per suspension, without UDSKit.
        .executableTarget(name: "suspension-floor"),
        // The least an async echo server can do on this runtime, without UDSKit.
        .target(name: "CBareEpoll"),
        .executableTarget(name: "bare-async-echo", dependencies: ["CBareEpoll"]),
        .executableTarget(
            name: "nio-echo-server",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
