import Glibc
import Synchronization
import Testing
@testable import UDSKit

/// One kind of async operation that has to wait, set up so that `count`
/// tasks wait on the same socket at once.
struct WaitingOperation: Sendable {
    /// Waits once (an accept, a one-byte read, a send into a full queue, ...).
    let wait: @Sendable (_ timeout: Duration?) async throws -> Void
    /// Lets `count` waits complete (the peer writes, reads or connects).
    let release: @Sendable (_ count: Int) async throws -> Void
    /// Closes the socket the tasks wait on.
    let close: @Sendable () throws -> Void
    /// Anything the fixture must keep alive until the end.
    let keepAlive: [any Sendable]
}

/// Every async type, in each direction it can wait.
enum WaitingKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case streamRead, streamReadable, streamWrite, streamWritable
    case datagramReceive, datagramSend, seqpacketReceive, seqpacketSend
    case streamAccept, seqpacketAccept

    var testDescription: String { rawValue }

    func make() async throws -> WaitingOperation {
        switch self {
        case .streamRead:
            let (waiting, peer) = try AsyncStreamSocket.makePair()
            return WaitingOperation(
                wait: { timeout in
                    let byte = try await waiting.read(upTo: 1, timeout: timeout)
                    try #require(byte.count == 1)
                },
                release: { count in try await peer.writeAll([UInt8](repeating: 7, count: count)) },
                close: { try waiting.close() }, keepAlive: [peer])
        case .streamReadable:
            let (waiting, peer) = try AsyncStreamSocket.makePair()
            try #require(try waitingTryRead(waiting) == nil)  // Known empty: readable() really waits.
            return WaitingOperation(
                wait: { timeout in try await waiting.readable(timeout: timeout) },
                release: { _ in try await peer.writeAll([1]) },
                close: { try waiting.close() }, keepAlive: [peer])
        case .streamWrite, .streamWritable:
            let (waiting, peer) = try AsyncStreamSocket.makePair()
            try fill { try waiting.tryWrite($0) }
            let writes = self == .streamWrite
            return WaitingOperation(
                wait: { timeout in
                    if writes { try await waiting.writeAll([9], timeout: timeout) } else { try await waiting.writable(timeout: timeout) }
                },
                release: { _ in try await drain { try peer.tryRead(into: $0) } },
                close: { try waiting.close() }, keepAlive: [peer])
        case .datagramReceive:
            let (first, second) = try DatagramSocket.makePair()
            let waiting = try AsyncDatagramSocket(first)
            let peer = try AsyncDatagramSocket(second)
            return WaitingOperation(
                wait: { timeout in
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 1)
                    defer { buffer.deallocate() }
                    _ = try await waiting.receive(into: buffer, timeout: timeout)
                },
                release: { count in for _ in 0..<count { try await peer.send([5]) } },
                close: { try waiting.close() }, keepAlive: [peer])
        case .datagramSend:
            let (first, second) = try DatagramSocket.makePair()
            let waiting = try AsyncDatagramSocket(first)
            let peer = second
            try fillMessages { try waiting.trySend($0) }
            return WaitingOperation(
                wait: { timeout in try await waiting.send([1], timeout: timeout) },
                release: { _ in try await drainMessages(peer) },
                close: { try waiting.close() }, keepAlive: [peer])
        case .seqpacketReceive:
            let (waiting, peer) = try AsyncSeqpacketSocket.makePair()
            return WaitingOperation(
                wait: { timeout in
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 1)
                    defer { buffer.deallocate() }
                    let receipt = try await waiting.receive(into: buffer, timeout: timeout)
                    try #require(receipt.count == 1)
                },
                release: { count in for _ in 0..<count { try await peer.send([5]) } },
                close: { try waiting.close() }, keepAlive: [peer])
        case .seqpacketSend:
            let (first, second) = try SeqpacketSocket.makePair()
            let waiting = try AsyncSeqpacketSocket(first)
            try fillMessages { try waiting.trySend($0) }
            return WaitingOperation(
                wait: { timeout in try await waiting.send([1], timeout: timeout) },
                release: { _ in try await drainMessages(second) },
                close: { try waiting.close() }, keepAlive: [second])
        case .streamAccept:
            let address = try uniqueAbstractAddress("waiters-accept")
            let listener = try AsyncStreamListener.bind(to: address)
            return accepting(
                wait: { timeout in _ = try await listener.accept(timeout: timeout) },
                connect: { try StreamSocket.connect(to: address) }, close: { try listener.close() })
        case .seqpacketAccept:
            let address = try uniqueAbstractAddress("waiters-accept-seq")
            let listener = try AsyncSeqpacketListener.bind(to: address)
            return accepting(
                wait: { timeout in _ = try await listener.accept(timeout: timeout) },
                connect: { try SeqpacketSocket.connect(to: address) }, close: { try listener.close() })
        }
    }

    /// Accepts wait on a listener; `connect` makes a client that releases one.
    private func accepting<Client: Sendable>(
        wait: @escaping @Sendable (Duration?) async throws -> Void,
        connect: @escaping @Sendable () throws -> Client, close: @escaping @Sendable () throws -> Void
    ) -> WaitingOperation {
        let clients = Mutex<[Client]>([])
        return WaitingOperation(
            wait: wait,
            release: { count in
                for _ in 0..<count {
                    let client = try connect()
                    clients.withLock { $0.append(client) }
                }
            },
            close: close, keepAlive: [])
    }
}

private func waitingTryRead(_ socket: AsyncStreamSocket) throws -> Int? {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
    defer { buffer.deallocate() }
    return try socket.tryRead(into: buffer)
}

/// Writes with `tryWrite` until the socket's buffers are full.
private func fill(_ tryWrite: (UnsafeRawBufferPointer) throws -> Int?) throws {
    let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
    defer { chunk.deallocate() }
    chunk.initializeMemory(as: UInt8.self, repeating: 3)
    while try tryWrite(UnsafeRawBufferPointer(chunk)) != nil {}
}

/// Sends one-byte messages until the receiver's queue is full.
private func fillMessages(_ trySend: ([UInt8]) throws -> Bool) throws {
    while try trySend([2]) {}
}

/// Reads everything the peer has for a while, so every waiting writer gets room.
private func drain(_ tryRead: (UnsafeMutableRawBufferPointer) throws -> Int?) async throws {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 1)
    defer { buffer.deallocate() }
    var idleRounds = 0
    while idleRounds < 20 {
        if let count = try tryRead(buffer), count > 0 { idleRounds = 0 } else { idleRounds += 1 }
        try await Task.sleep(for: .milliseconds(5))
    }
}

private func drainMessages(_ socket: some MessageDraining) async throws {
    var idleRounds = 0
    while idleRounds < 20 {
        if try socket.receiveWithoutWaiting() { idleRounds = 0 } else { idleRounds += 1 }
        if idleRounds > 0 { try await Task.sleep(for: .milliseconds(5)) }
    }
}

protocol MessageDraining: Sendable {
    /// Takes one message if one is queued.
    func receiveWithoutWaiting() throws -> Bool
}

extension DatagramSocket: MessageDraining {
    func receiveWithoutWaiting() throws -> Bool { try dontWait(descriptor.rawValue) }
}

extension SeqpacketSocket: MessageDraining {
    func receiveWithoutWaiting() throws -> Bool { try dontWait(descriptor.rawValue) }
}

private func dontWait(_ fd: CInt) throws -> Bool {
    var byte: UInt8 = 0
    let count = recv(fd, &byte, 1, CInt(MSG_DONTWAIT))
    if count >= 0 { return true }
    if errno == EAGAIN { return false }
    throw POSIXFailure(call: "recv", errno: errno)
}

extension AsyncDatagramSocket {
    /// A send that never waits: `false` when the receiver's queue is full.
    func trySend(_ bytes: [UInt8]) throws -> Bool { try nonBlockingSend(descriptor.rawValue, bytes) }
}

extension AsyncSeqpacketSocket {
    func trySend(_ bytes: [UInt8]) throws -> Bool { try nonBlockingSend(handle.descriptor, bytes) }
}

private func nonBlockingSend(_ fd: CInt, _ bytes: [UInt8]) throws -> Bool {
    let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, CInt(MSG_DONTWAIT | MSG_NOSIGNAL)) }
    if sent >= 0 { return true }
    if errno == EAGAIN { return false }
    throw POSIXFailure(call: "send", errno: errno)
}

/// Starts `count` tasks that each wait once with `timeout`, and collects how
/// each ended.
/// With `scoped`, each waits inside `withSocketCancellationScope`.
private func startWaiters(
    _ operation: WaitingOperation, count: Int, timeout: Duration?, scoped: Bool = false
) -> (tasks: [Task<Void, any Error>], started: StartCount) {
    let started = StartCount()
    let tasks = (0..<count).map { _ in
        Task {
            started.value.add(1, ordering: .relaxed)
            if scoped {
                try await withSocketCancellationScope { try await operation.wait(timeout) }
            } else {
                try await operation.wait(timeout)
            }
        }
    }
    return (tasks, started)
}

final class StartCount: Sendable {
    let value = Atomic<Int>(0)
}

/// Bounds here prove that every waiter ended, not how fast.
private let generous = endsRatherThanHangs

private func outcomes(_ tasks: [Task<Void, any Error>]) async -> [Result<Void, any Error>] {
    var results: [Result<Void, any Error>] = []
    for task in tasks { results.append(await task.result) }
    return results
}

/// Lets the tasks reach their wait: there is no hook to observe a suspended
/// task, so give them time; a task that is not waiting yet still ends the
/// same way, so this only makes the test stronger, never flaky.
private func letThemWait(_ started: StartCount, count: Int) async throws {
    while started.value.load(ordering: .relaxed) < count { try await Task.sleep(for: .milliseconds(1)) }
    try await Task.sleep(for: .milliseconds(100))
}

@Suite("Many waiters on one async socket")
struct AsyncWaitersTests {
    static let counts = [2, 64]

    @Test("readiness wakes every waiter", arguments: WaitingKind.allCases, counts)
    func readinessWakesEveryWaiter(kind: WaitingKind, count: Int) async throws {
        let operation = try await kind.make()
        defer { try? operation.close() }
        let (tasks, started) = startWaiters(operation, count: count, timeout: generous)
        try await letThemWait(started, count: count)
        try await operation.release(count)
        for (index, result) in await outcomes(tasks).enumerated() {
            #expect(throws: Never.self, "waiter \(index) of \(count)") { try result.get() }
        }
        withExtendedLifetime(operation.keepAlive) {}
    }

    @Test("each waiter ends at its own deadline", arguments: WaitingKind.allCases, counts)
    func eachWaiterTimesOut(kind: WaitingKind, count: Int) async throws {
        let operation = try await kind.make()
        defer { try? operation.close() }
        let clock = ContinuousClock()
        let start = clock.now
        let (tasks, _) = startWaiters(operation, count: count, timeout: .milliseconds(200))
        for result in await outcomes(tasks) {
            #expect(throws: SocketError.self) { try result.get() }
            if case .failure(let error as SocketError) = result { #expect(error.code == .timedOut) }
        }
        #expect(clock.now - start < generous)
        withExtendedLifetime(operation.keepAlive) {}
    }

    @Test("cancelling the waiters ends each of them", arguments: WaitingKind.allCases, counts)
    func cancellationEndsEveryWaiter(kind: WaitingKind, count: Int) async throws {
        try await cancelHalfThenTheRest(kind: kind, count: count, scoped: false)
    }

    @Test("cancelling waiters that each share one handler in a scope ends each of them", arguments: WaitingKind.allCases, counts)
    func cancellationEndsEveryScopedWaiter(kind: WaitingKind, count: Int) async throws {
        try await cancelHalfThenTheRest(kind: kind, count: count, scoped: true)
    }

    @Test("readiness wakes every waiter in a scope", arguments: WaitingKind.allCases)
    func readinessWakesEveryScopedWaiter(kind: WaitingKind) async throws {
        let operation = try await kind.make()
        defer { try? operation.close() }
        let (tasks, started) = startWaiters(operation, count: 2, timeout: generous, scoped: true)
        try await letThemWait(started, count: 2)
        try await operation.release(2)
        for result in await outcomes(tasks) { #expect(throws: Never.self) { try result.get() } }
        withExtendedLifetime(operation.keepAlive) {}
    }

    private func cancelHalfThenTheRest(kind: WaitingKind, count: Int, scoped: Bool) async throws {
        let operation = try await kind.make()
        defer { try? operation.close() }
        let (tasks, started) = startWaiters(operation, count: count, timeout: generous, scoped: scoped)
        try await letThemWait(started, count: count)
        // Half are cancelled; the other half must go on waiting, unharmed.
        for task in tasks.prefix(count / 2) { task.cancel() }
        for result in await outcomes(Array(tasks.prefix(count / 2))) {
            #expect(throws: CancellationError.self) { try result.get() }
        }
        for task in tasks.dropFirst(count / 2) { task.cancel() }
        for result in await outcomes(Array(tasks.dropFirst(count / 2))) {
            #expect(throws: CancellationError.self) { try result.get() }
        }
        withExtendedLifetime(operation.keepAlive) {}
    }

    @Test("close ends every waiter with .closed", arguments: WaitingKind.allCases, counts)
    func closeEndsEveryWaiter(kind: WaitingKind, count: Int) async throws {
        let operation = try await kind.make()
        let (tasks, started) = startWaiters(operation, count: count, timeout: generous)
        try await letThemWait(started, count: count)
        try operation.close()
        for result in await outcomes(tasks) {
            guard case .failure(let error as SocketError) = result else {
                Issue.record("expected .closed, got \(result)")
                continue
            }
            #expect(error.code == .closed)
        }
        withExtendedLifetime(operation.keepAlive) {}
    }

    /// The case from the report: one byte arrives for two readers, then the
    /// socket closes; the reader that got nothing must not hang. Steps wait
    /// for what they need (both reading, one done), not for time to pass.
    @Test func twoReadersOneByteThenClose() async throws {
        let (waiting, peer) = try AsyncStreamSocket.makePair()
        defer { try? peer.close() }
        let started = StartCount()
        let finished = StartCount()
        let readers = (0..<2).map { _ in
            Task {
                started.value.add(1, ordering: .relaxed)
                defer { finished.value.add(1, ordering: .relaxed) }
                return try await waiting.read(upTo: 1, timeout: endsRatherThanHangs)
            }
        }
        try await letThemWait(started, count: 2)
        try await peer.writeAll([1])
        while finished.value.load(ordering: .relaxed) < 1 { try await Task.sleep(for: .milliseconds(1)) }
        try waiting.close()
        var bytes = 0
        var closed = 0
        for reader in readers {
            switch await reader.result {
            case .success(let read): bytes += read.count
            case .failure(let error as SocketError) where error.code == .closed: closed += 1
            case .failure(let error): Issue.record("unexpected \(error)")
            }
        }
        #expect(bytes == 1)
        #expect(closed == 1)
    }
}
