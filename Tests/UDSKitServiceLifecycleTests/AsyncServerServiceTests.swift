import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import Testing
import UDSKit
import UDSKitServiceLifecycle

// The server under a real ServiceGroup, over real sockets.

/// A bound for what must end rather than hang; generous for a loaded 2-core machine.
private let endsRatherThanHangs = Duration.seconds(60)

private func uniqueAddress(_ tag: String) throws -> UnixAddress {
    try UnixAddress(abstractName: "udskit-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))-\(tag)")
}

private let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

@Suite("AsyncServerService")
struct AsyncServerServiceTests {
    @Test func aGracefulShutdownOfTheGroupFinishesARequestInFlight() async throws {
        let address = try uniqueAddress("graceful")
        let listener = try AsyncStreamListener.bind(to: address)
        let requested = Atomic<Bool>(false)
        let server = AsyncStreamServer(listener: listener) { connection, _, context in
            let request = try await connection.read(upTo: 16)
            requested.store(true, ordering: .releasing)
            // Answered only once the group's shutdown reached the server.
            await context.waitUntilShuttingDown()
            try await connection.writeAll(Array("done: ".utf8) + request)
        }
        let group = ServiceGroup(services: [server.service(gracePeriod: .seconds(3600))], logger: quiet)
        let running = Task { try await group.run() }

        let client = try await AsyncStreamSocket.connect(to: address)
        try await client.writeAll(Array("work".utf8))
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while !requested.load(ordering: .acquiring) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        await group.triggerGracefulShutdown()

        let reply = try await client.read(upTo: 64, timeout: endsRatherThanHangs)
        #expect(String(decoding: reply, as: UTF8.self) == "done: work")
        try await running.value
        #expect(server.isShuttingDown)
        #expect(server.openConnections == 0)
        // The listener was closed: nobody accepts any more.
        await #expect(throws: SocketError.self) { try await AsyncStreamSocket.connect(to: address) }
        try client.close()
    }

    @Test func theGracePeriodEndsIdleConnections() async throws {
        let address = try uniqueAddress("grace")
        let listener = try AsyncStreamListener.bind(to: address)
        let connected = Atomic<Bool>(false)
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            connected.store(true, ordering: .releasing)
            _ = try await connection.read(upTo: 16)
        }
        let grace = Duration.milliseconds(200)
        let group = ServiceGroup(services: [AsyncServerService(server, gracePeriod: grace)], logger: quiet)
        let running = Task { try await group.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while !connected.load(ordering: .acquiring) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        let started = ContinuousClock.now
        await group.triggerGracefulShutdown()
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try await running.value
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= grace && elapsed < endsRatherThanHangs)
        try client.close()
    }

    @Test func cancellingTheGroupClosesConnectionsAtOnce() async throws {
        let address = try uniqueAddress("cancel")
        let listener = try AsyncStreamListener.bind(to: address)
        let connected = Atomic<Bool>(false)
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            connected.store(true, ordering: .releasing)
            _ = try await connection.read(upTo: 16)
        }
        // A grace period no test waits for: only cancellation can end it in time.
        let group = ServiceGroup(services: [server.service(gracePeriod: .seconds(3600))], logger: quiet)
        let running = Task { try await group.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while !connected.load(ordering: .acquiring) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        running.cancel()
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        _ = try? await running.value
        #expect(server.openConnections == 0)
        try client.close()
    }
}
