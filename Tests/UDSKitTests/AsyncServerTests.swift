import Glibc
import Logging
import Synchronization
import Testing
import UDSKit

// AsyncServer over real sockets in temporary directories. Time bounds only
// say that something ends; where a test needs a wait to pass first, the wait
// is what the test measures from, never a guess of how long work takes.

@Suite("AsyncServer")
struct AsyncServerTests {
    @Test func aConnectionMidRequestFinishesAfterShutdownBegan() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let path = directory.path("s")
            let listener = try AsyncStreamListener.bind(to: UnixAddress(path: path))
            let requests = ServerTestFlag()
            let server = AsyncStreamServer(listener: listener) { connection, _, context in
                let request = try await connection.read(upTo: 16)
                requests.set()
                // The reply needs the shutdown to have begun: it is sent
                // during the grace period, never before it.
                await context.waitUntilShuttingDown()
                #expect(context.isShuttingDown)
                try await connection.writeAll(Array("reply to ".utf8) + request)
            }
            let running = Task { try await server.run() }

            let client = try await AsyncStreamSocket.connect(to: UnixAddress(path: path))
            try await client.writeAll(Array("ping".utf8))
            try await requests.wait()
            let started = ContinuousClock.now
            server.shutdown(gracePeriod: .seconds(120))
            #expect(server.isShuttingDown)
            // Closed at once, before any connection ended.
            #expect(!fileExists(atPath: path))

            let reply = try await client.read(upTo: 64, timeout: endsRatherThanHangs)
            #expect(String(decoding: reply, as: UTF8.self) == "reply to ping")
            #expect(try await client.read(upTo: 64, timeout: endsRatherThanHangs).isEmpty)
            try await running.value
            // It ended when the handler returned, not at the deadline.
            #expect(ContinuousClock.now - started < endsRatherThanHangs)
            #expect(server.openConnections == 0)
            try client.close()
        }
    }

    @Test func aConnectAfterShutdownIsRefusedAndTheFileIsGone() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let path = directory.path("s")
            let listener = try AsyncStreamListener.bind(to: UnixAddress(path: path))
            let server = AsyncStreamServer(listener: listener) { _, _, _ in }
            let running = Task { try await server.run() }
            #expect(fileExists(atPath: path))
            server.shutdown(gracePeriod: .seconds(5))
            #expect(!fileExists(atPath: path))
            do {
                let late = try await AsyncStreamSocket.connect(to: UnixAddress(path: path), timeout: endsRatherThanHangs)
                try late.close()
                Issue.record("a connect after shutdown succeeded")
            } catch let error as SocketError {
                #expect(error.errno == .noSuchFileOrDirectory || error.errno == .connectionRefused, "\(error)")
            }
            try await running.value
        }
    }

    @Test func anAbstractListenerRefusesConnectsOnceShutDown() async throws {
        let address = try uniqueAbstractAddress("server")
        let listener = try AsyncStreamListener.bind(to: address)
        let server = AsyncStreamServer(listener: listener) { _, _, _ in }
        let running = Task { try await server.run() }
        server.shutdown(gracePeriod: .zero)
        try await running.value
        let error = await #expect(throws: SocketError.self) {
            try await AsyncStreamSocket.connect(to: address, timeout: endsRatherThanHangs)
        }
        #expect(error?.errno == .connectionRefused)
    }

    @Test func anIdleConnectionIsClosedAtTheDeadline() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let path = directory.path("s")
            let listener = try AsyncStreamListener.bind(to: UnixAddress(path: path))
            let connected = ServerTestFlag()
            let failures = Mutex<[String]>([])
            let closedUnderHandler = ServerTestFlag()
            let server = AsyncStreamServer(
                listener: listener, onConnectionError: { error, _ in failures.withLock { $0.append("\(error)") } }
            ) { connection, _, _ in
                connected.set()
                do {
                    // Idle: never sends. The deadline closes it under this read.
                    _ = try await connection.read(upTo: 16)
                } catch let error as SocketError where error.code == .closed {
                    closedUnderHandler.set()
                    throw error
                }
            }
            let running = Task { try await server.run() }
            let client = try await AsyncStreamSocket.connect(to: UnixAddress(path: path))
            try await connected.wait()
            let grace = Duration.milliseconds(300)
            let started = ContinuousClock.now
            server.shutdown(gracePeriod: grace)
            // The client sees its end of the stream once the server closes it.
            #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
            try await running.value
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= grace)
            #expect(elapsed < endsRatherThanHangs)
            #expect(closedUnderHandler.isSet)
            // A cut is not a handler failure.
            #expect(failures.withLock { $0 }.isEmpty)
            try client.close()
        }
    }

    @Test func aHandlerThatThrowsEndsOnlyItsConnection() async throws {
        struct Refused: Error {}
        let address = try uniqueAbstractAddress("throws")
        let listener = try AsyncStreamListener.bind(to: address)
        let failures = Mutex<[(String, Int)]>([])
        let server = AsyncStreamServer(
            listener: listener, onConnectionError: { error, id in failures.withLock { $0.append(("\(error)", id)) } }
        ) { connection, _, _ in
            let request = try await connection.read(upTo: 16)
            if request == Array("bad".utf8) { throw Refused() }
            try await connection.writeAll(request)
        }
        let running = Task { try await server.run() }

        let bad = try await AsyncStreamSocket.connect(to: address)
        try await bad.writeAll(Array("bad".utf8))
        #expect(try await bad.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try bad.close()

        let good = try await AsyncStreamSocket.connect(to: address)
        try await good.writeAll(Array("good".utf8))
        #expect(try await good.read(upTo: 16, timeout: endsRatherThanHangs) == Array("good".utf8))
        try good.close()

        #expect(failures.withLock { $0.map(\.1) } == [1])
        #expect(!server.isShuttingDown)
        server.shutdown(gracePeriod: .seconds(5))
        try await running.value
    }

    @Test func manyConnectionsAreServedAndAllEnd() async throws {
        let address = try uniqueAbstractAddress("many")
        let listener = try AsyncStreamListener.bind(to: address)
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            while true {
                let bytes = try await connection.read(upTo: 4096)
                if bytes.isEmpty { return }
                try await connection.writeAll(bytes)
            }
        }
        let running = Task { try await server.run() }
        let count = 64
        // Every client stays connected until all have their echo, so that
        // the server really holds them all at once.
        let clients = try await withThrowingTaskGroup(of: AsyncStreamSocket.self) { group in
            for index in 0..<count {
                group.addTask {
                    let client = try await AsyncStreamSocket.connect(to: address)
                    let message = patternBytes(count: 1000 + index, seed: UInt64(index))
                    try await client.writeAll(message)
                    var echoed: [UInt8] = []
                    while echoed.count < message.count {
                        let part = try await client.read(upTo: message.count - echoed.count, timeout: endsRatherThanHangs)
                        if part.isEmpty { break }
                        echoed += part
                    }
                    #expect(echoed == message)
                    return client
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(clients.count == count)
        #expect(server.openConnections == count)
        server.shutdown(gracePeriod: endsRatherThanHangs)
        // The clients hang up; the server ends as the last one does.
        for client in clients { try client.shutdown(.write) }
        try await running.value
        #expect(server.openConnections == 0)
        for client in clients { try client.close() }
    }

    @Test func runTwiceIsAnError() async throws {
        let listener = try AsyncStreamListener.bind(to: uniqueAbstractAddress("twice"))
        let server = AsyncStreamServer(listener: listener) { _, _, _ in }
        // Whichever call comes second fails at once; the first runs until the
        // shutdown, which comes only after that failure.
        await withTaskGroup(of: Result<Void, any Error>.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    do {
                        try await server.run()
                        return .success(())
                    } catch {
                        return .failure(error)
                    }
                }
            }
            let first = await group.next()!
            #expect(throws: AsyncServerError.alreadyRun) { try first.get() }
            server.shutdown(gracePeriod: .zero)
            let second = await group.next()!
            #expect(throws: Never.self) { try second.get() }
        }
        await #expect(throws: AsyncServerError.alreadyRun) { try await server.run() }
    }

    @Test func cancellingRunClosesEveryConnectionAtOnce() async throws {
        let address = try uniqueAbstractAddress("cancel")
        let listener = try AsyncStreamListener.bind(to: address)
        let connected = ServerTestFlag()
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            connected.set()
            _ = try await connection.read(upTo: 16)
        }
        let running = Task { try await server.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        try await connected.wait()
        running.cancel()
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try await running.value
        #expect(server.isShuttingDown)
        #expect(server.openConnections == 0)
        try client.close()
    }

    @Test func cancellingRunEndsAHandlersWaitWithCancellation() async throws {
        let address = try uniqueAbstractAddress("cancelwait")
        let listener = try AsyncStreamListener.bind(to: address)
        let connected = ServerTestFlag()
        let outcomes = Outcomes()
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            // The connection's task waits on its connection (with no handler
            // of its own: the server ends it), and a child task waits on the
            // same connection with its own.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    do {
                        _ = try await connection.read(upTo: 16)
                        outcomes.append("child read returned")
                    } catch {
                        outcomes.append("child", error)
                    }
                }
                connected.set()
                do {
                    _ = try await connection.read(upTo: 16)
                    outcomes.append("owner read returned")
                } catch {
                    outcomes.append("owner", error)
                }
                try await group.waitForAll()
            }
        }
        let running = Task { try await server.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        try await connected.wait()
        running.cancel()
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try await running.value
        #expect(outcomes.all.sorted() == ["child: cancelled", "owner: cancelled"])
        try client.close()
    }

    @Test func aHandlersReadTimesOutAndItsConnectionGoesOn() async throws {
        let address = try uniqueAbstractAddress("timeout")
        let listener = try AsyncStreamListener.bind(to: address)
        let outcomes = Outcomes()
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            // The task owns its connection's waits; a deadline still ends one.
            do {
                _ = try await connection.read(upTo: 16, timeout: .milliseconds(20))
                outcomes.append("first read returned")
            } catch let error as SocketError where error.code == .timedOut {
                outcomes.append("timed out")
            }
            let request = try await connection.read(upTo: 16, timeout: endsRatherThanHangs)
            try await connection.writeAll(request)
        }
        let running = Task { try await server.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while outcomes.all.isEmpty && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        try await client.writeAll(Array("after".utf8))
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs) == Array("after".utf8))
        #expect(outcomes.all == ["timed out"])
        server.shutdown(gracePeriod: .zero)
        try await running.value
        try client.close()
    }

    @Test func theOwnerAndItsChildTasksReadOneConnectionAndLoseNothing() async throws {
        let address = try uniqueAbstractAddress("shared")
        let listener = try AsyncStreamListener.bind(to: address)
        let total = Tally()
        let children = 8
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            // The owner's waits and its children's (each with a handler of
            // its own) on one registration: every read ends, at the end of
            // the stream if not before, and the bytes add up.
            func readToEnd() async throws -> Int {
                var count = 0
                while true {
                    let bytes = try await connection.read(upTo: 3)
                    if bytes.isEmpty { return count }
                    count += bytes.count
                }
            }
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<children { group.addTask { try await readToEnd() } }
                total.add(try await readToEnd())
                for try await count in group { total.add(count) }
            }
        }
        let running = Task { try await server.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        let message = patternBytes(count: 64 * 1024, seed: 9)
        try await client.writeAll(message)
        try client.shutdown(.write)
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        #expect(total.value == message.count)
        server.shutdown(gracePeriod: .zero)
        try await running.value
        try client.close()
    }

    @Test func aShutdownBeforeRunEndsItAtOnce() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let path = directory.path("s")
            let server = AsyncStreamServer(listener: try AsyncStreamListener.bind(to: UnixAddress(path: path))) { _, _, _ in }
            server.shutdown(gracePeriod: .seconds(120))
            #expect(!fileExists(atPath: path))
            try await server.run()
        }
    }

    @Test func aLaterShutdownMovesTheDeadlineCloser() async throws {
        let address = try uniqueAbstractAddress("closer")
        let listener = try AsyncStreamListener.bind(to: address)
        let connected = ServerTestFlag()
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            connected.set()
            _ = try await connection.read(upTo: 16)
        }
        let running = Task { try await server.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        try await connected.wait()
        server.shutdown(gracePeriod: .seconds(3600))
        server.shutdown(gracePeriod: .seconds(7200))  // Never later.
        server.shutdown(gracePeriod: .zero)
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try await running.value
        try client.close()
    }

    @Test func atTheDeadlineAHandlerThatWaitsOnSomethingElseIsCancelled() async throws {
        let address = try uniqueAbstractAddress("sleeper")
        let listener = try AsyncStreamListener.bind(to: address)
        let sleeping = ServerTestFlag()
        let cancelled = ServerTestFlag()
        let server = AsyncStreamServer(listener: listener) { _, _, _ in
            sleeping.set()
            // Not a socket operation: only the task's cancellation ends it.
            do {
                try await Task.sleep(for: .seconds(3600))
            } catch is CancellationError {
                cancelled.set()
                throw CancellationError()
            }
        }
        let running = Task { try await server.run() }
        let client = try await AsyncStreamSocket.connect(to: address)
        try await sleeping.wait()
        server.shutdown(gracePeriod: .milliseconds(20))
        try await running.value
        #expect(cancelled.isSet)
        try client.close()
    }

    @Test func aHandlerWaitingForTheShutdownIsWokenByIt() async throws {
        let address = try uniqueAbstractAddress("waiter")
        let listener = try AsyncStreamListener.bind(to: address)
        let waiting = Tally()
        let server = AsyncStreamServer(listener: listener) { connection, _, context in
            #expect(!context.isShuttingDown)
            waiting.add(1)
            await context.waitUntilShuttingDown()
            try await connection.writeAll(Array("goodbye".utf8))
        }
        let running = Task { try await server.run() }
        let clients = [try await AsyncStreamSocket.connect(to: address), try await AsyncStreamSocket.connect(to: address)]
        // Both handlers have started (a connection is counted as open before
        // its task starts, so the count of open connections is not enough).
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while waiting.value < 2 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        server.shutdown(gracePeriod: endsRatherThanHangs)
        for client in clients {
            #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs) == Array("goodbye".utf8))
            try client.close()
        }
        try await running.value
    }

    @Test func aTCPServerFinishesItsRequestAndThenRefusesConnects() async throws {
        let listener = try AsyncStreamListener.bind(to: Endpoint.tcp(host: "127.0.0.1", port: 0))
        let endpoint = try listener.localEndpoint()
        let requests = ServerTestFlag()
        let server = AsyncStreamServer(listener: listener) { connection, _, context in
            let request = try await connection.read(upTo: 16)
            requests.set()
            await context.waitUntilShuttingDown()
            try await connection.writeAll(request)
        }
        let running = Task { try await server.run() }
        let client = try await AsyncStreamSocket.connect(to: endpoint)
        try await client.writeAll(Array("tcp".utf8))
        try await requests.wait()
        server.shutdown(gracePeriod: endsRatherThanHangs)
        #expect(try await client.read(upTo: 16, timeout: endsRatherThanHangs) == Array("tcp".utf8))
        try await running.value
        let error = await #expect(throws: SocketError.self) {
            try await AsyncStreamSocket.connect(to: endpoint, timeout: endsRatherThanHangs)
        }
        #expect(error?.errno == .connectionRefused)
        try client.close()
    }

    @Test func aSeqpacketServerEchoesAndShutsDown() async throws {
        let address = try uniqueAbstractAddress("seqpacket")
        let listener = try AsyncSeqpacketListener.bind(to: address)
        let server = AsyncSeqpacketServer(listener: listener) { connection, _, _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
            defer { buffer.deallocate() }
            while true {
                let message = try await connection.receive(into: buffer)
                if message.count == 0 { return }
                _ = try await connection.send(UnsafeRawBufferPointer(rebasing: buffer[..<message.count]))
            }
        }
        let running = Task { try await server.run() }
        let client = try await AsyncSeqpacketSocket.connect(to: address)
        _ = try await client.send(Array("one message".utf8))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
        defer { buffer.deallocate() }
        let reply = try await client.receive(into: buffer, timeout: endsRatherThanHangs)
        #expect(Array(buffer[..<reply.count]) == Array("one message".utf8))
        server.shutdown(gracePeriod: .zero)
        try await running.value
        try client.close()
    }

    @Test func theLoggerHearsOfRefusalsAndTheShutdown() async throws {
        let logs = CapturedLogs()
        let logger = Logger(label: "test") { _ in CapturingLogHandler(logs: logs) }
        let address = try uniqueAbstractAddress("logged")
        // Refuses the first peer only; admits the rest.
        let refusedOne = Mutex(false)
        let policy = AccessPolicy { _ in refusedOne.withLock { refused in defer { refused = true }; return refused } }
        let listener = try AsyncStreamListener.bind(to: address, options: BindOptions(logger: logger), admitting: policy)
        let connected = ServerTestFlag()
        let server = AsyncStreamServer(listener: listener, logger: logger) { connection, _, _ in
            connected.set()
            _ = try await connection.read(upTo: 16)
        }
        let running = Task { try await server.run() }

        let refused = try await AsyncStreamSocket.connect(to: address)
        #expect(try await refused.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try refused.close()
        let idle = try await AsyncStreamSocket.connect(to: address)
        try await connected.wait()
        server.shutdown(gracePeriod: .milliseconds(50))
        #expect(try await idle.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try await running.value
        try idle.close()

        let records = logs.records
        let refusal = try #require(records.first { $0.message.hasPrefix("refused a connection") })
        #expect(refusal.level == .notice)
        #expect(refusal.metadata["peer.uid"] == "\(getuid())")
        #expect(refusal.metadata["peer.gid"] == "\(getgid())")
        #expect(refusal.metadata["peer.pid"] == "\(getpid())")
        let began = try #require(records.first { $0.message.hasPrefix("shutting down") })
        #expect(began.level == .info)
        #expect(began.metadata["connections"] == "1")
        let cut = try #require(records.first { $0.message.hasPrefix("shutdown deadline") })
        #expect(cut.metadata["connections"] == "1")
        #expect(records.last?.message == "server stopped")
        // Nothing per connection or message at these levels.
        #expect(records.count == 4, "\(records.map(\.message))")
    }

    @Test func aServerLendsItsLoggerToAnAdoptedListener() async throws {
        let logs = CapturedLogs()
        let logger = Logger(label: "test") { _ in CapturingLogHandler(logs: logs) }
        let address = try uniqueAbstractAddress("lent")
        // Bound without a logger, as an activated listener is.
        let listener = try AsyncStreamListener.bind(to: address, admitting: AccessPolicy { _ in false })
        let server = AsyncStreamServer(listener: listener, logger: logger) { _, _, _ in }
        let running = Task { try await server.run() }
        let refused = try await AsyncStreamSocket.connect(to: address)
        #expect(try await refused.read(upTo: 16, timeout: endsRatherThanHangs).isEmpty)
        try refused.close()
        server.shutdown(gracePeriod: .zero)
        try await running.value
        #expect(logs.records.contains { $0.message.hasPrefix("refused a connection") && $0.level == .notice })
    }
}

// MARK: Descriptors, counted in a quiet child process

/// Servers that shut down every way (clients that hang up, idle ones cut at
/// the deadline, handlers that throw) leave no descriptor behind. Counted in
/// a child process of this test binary, where nothing else runs (see
/// `DescriptorLeakTests`).
@Suite("AsyncServer descriptors")
struct AsyncServerDescriptorTests {
    @Test func aServerLeavesNoDescriptorInAChildProcess() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let child = try await runTestInChildProcess(named: "serverRoundsInChildProcess", in: directory)
            #expect(child.reason == .exit)
            #expect(child.status == 0, "child output:\n\(child.output)")
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            #expect(result["rounds"] == "4")
            #expect(result["before"] == result["after"], "extra: \(result["extra"] ?? "")")
        }
    }

    /// One server's life: `count` clients, every third of which stays idle
    /// until the deadline cuts it, every third of which makes its handler throw.
    static func round(_ address: UnixAddress, clients count: Int) async throws {
        struct Thrown: Error {}
        let listener = try AsyncStreamListener.bind(to: address)
        let server = AsyncStreamServer(listener: listener) { connection, _, _ in
            let request = try await connection.read(upTo: 16)
            if request == Array("throw".utf8) { throw Thrown() }
            try await connection.writeAll(request)
            _ = try await connection.read(upTo: 16)  // Until the client hangs up or the cut.
        }
        let running = Task { try await server.run() }
        var clients: [AsyncStreamSocket] = []
        for index in 0..<count {
            let client = try await AsyncStreamSocket.connect(to: address)
            let message = Array((index % 3 == 1 ? "throw" : "hello").utf8)
            try await client.writeAll(message)
            _ = try await client.read(upTo: 16, timeout: endsRatherThanHangs)
            if index % 3 == 0 { try client.close() } else { clients.append(client) }
        }
        server.shutdown(gracePeriod: .milliseconds(50))
        try await running.value
        for client in clients { try client.close() }
    }

    @Test(.enabled(if: isChildProcess(for: "serverRoundsInChildProcess")))
    func serverRoundsInChildProcess() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let address = try directory.address("s")
            // Warm up: what the runtime and the loop open once is open by now.
            try await Self.round(address, clients: 3)
            try await Task.sleep(for: .milliseconds(50))
            let before = openDescriptors()
            for _ in 0..<4 { try await Self.round(address, clients: 30) }
            var after = openDescriptors()
            for _ in 0..<3 where after != before {
                try await Task.sleep(for: .milliseconds(100))
                after = openDescriptors()
            }
            let extra = after.subtracting(before).sorted().map { "\($0):\(descriptorTarget($0))" }
            try writeChildResult([
                "rounds": "4", "before": String(before.count), "after": String(after.count),
                "extra": extra.prefix(20).joined(separator: ","),
            ])
            #expect(extra.isEmpty, "\(extra.count) descriptors more than before: \(extra.prefix(20))")
            #expect(!fileExists(atPath: directory.path("s")))
        }
    }
}

// MARK: Helpers

/// A flag a server test sets once and waits for.
final class ServerTestFlag: Sendable {
    private let value = Atomic<Bool>(false)

    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }

    struct NeverSet: Error {}

    /// Polls until set; fails after `endsRatherThanHangs`.
    func wait() async throws {
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while !isSet {
            guard ContinuousClock.now < deadline else { throw NeverSet() }
            try await Task.sleep(for: .milliseconds(2))
        }
    }
}

/// A sum that the tasks of a server test add to.
final class Tally: Sendable {
    private let sum = Atomic<Int>(0)

    var value: Int { sum.load(ordering: .acquiring) }

    func add(_ count: Int) { sum.add(count, ordering: .acquiringAndReleasing) }
}

/// What the tasks of a server test saw, in the order they said it.
final class Outcomes: Sendable {
    private let stored = Mutex<[String]>([])

    var all: [String] { stored.withLock { $0 } }

    func append(_ outcome: String) { stored.withLock { $0.append(outcome) } }

    /// "`who`: cancelled" for a `CancellationError`, else the error itself.
    func append(_ who: String, _ error: any Error) {
        append("\(who): \(error is CancellationError ? "cancelled" : "\(error)")")
    }
}

/// What a ``CapturingLogHandler`` recorded.
final class CapturedLogs: Sendable {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }
    private let stored = Mutex<[Record]>([])

    var records: [Record] { stored.withLock { $0 } }

    func append(_ record: Record) { stored.withLock { $0.append(record) } }
}

/// Records every event, at every level.
struct CapturingLogHandler: LogHandler {
    let logs: CapturedLogs
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        logs.append(.init(
            level: event.level, message: event.message.description,
            metadata: merged.mapValues { "\($0)" }))
    }
}
