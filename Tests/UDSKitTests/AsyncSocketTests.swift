import Foundation
import Glibc
import Synchronization
import Testing
@testable import UDSKit

/// A deterministic byte pattern, different for each stream, to catch reordering.
private func pattern(_ count: Int, seed: UInt8 = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 12)) }
}

/// Echoes one connection until the peer half-closes, then closes.
private func echo(_ connection: AsyncStreamSocket) async throws {
    defer { try? connection.close() }
    while true {
        let bytes = try await connection.read(upTo: 65536)
        if bytes.isEmpty { return }
        try await connection.writeAll(bytes)
    }
}

/// Runs an in-process async echo server on `loop` for the duration of `body`.
private func withEchoServer<R>(
    on loop: EventLoop = .shared, _ body: (UnixAddress) async throws -> R
) async throws -> R {
    let address = try uniqueAbstractAddress("async-echo")
    let listener = try AsyncStreamListener.bind(to: address, on: loop)
    let server = Task(executorPreference: loop) {
        await withDiscardingTaskGroup { group in
            for await (connection, _) in listener.connections.ignoringErrors() {
                group.addTask { try? await echo(connection) }
            }
        }
    }
    defer {
        try? listener.close()
        server.cancel()
    }
    return try await body(address)
}

extension AsyncSequence where Self: Sendable {
    /// Ends the sequence at the first error instead of throwing it.
    fileprivate func ignoringErrors() -> AsyncStream<Element> where Element: Sendable {
        let (stream, continuation) = AsyncStream<Element>.makeStream()
        let sequence = self
        Task {
            do {
                for try await element in sequence { continuation.yield(element) }
            } catch {}
            continuation.finish()
        }
        return stream
    }
}

@Suite("Async sockets")
struct AsyncSocketTests {
    @Test func echoOverManyConcurrentConnections() async throws {
        try await withEchoServer { address in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<100 {
                    group.addTask {
                        let client = try await AsyncStreamSocket.connect(to: address)
                        defer { try? client.close() }
                        let message = pattern(1000 + index, seed: UInt8(index))
                        for _ in 0..<5 {
                            try await client.writeAll(message)
                            var received: [UInt8] = []
                            while received.count < message.count {
                                let chunk = try await client.read(upTo: message.count - received.count, timeout: .seconds(30))
                                #expect(!chunk.isEmpty)
                                if chunk.isEmpty { return }
                                received += chunk
                            }
                            #expect(received == message)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    /// The client sends everything, shuts its write side, then reads: every
    /// byte must come back (an echo server that closes on EOF before writing
    /// everything fails this).
    @Test func halfCloseGetsEveryByteBack() async throws {
        try await withEchoServer { address in
            let client = try await AsyncStreamSocket.connect(to: address)
            defer { try? client.close() }
            let message = pattern(8 << 20, seed: 7)
            let writer = Task {
                try await client.writeAll(message)
                try client.shutdown(.write)
            }
            var received: [UInt8] = []
            received.reserveCapacity(message.count)
            while true {
                let chunk = try await client.read(upTo: 65536, timeout: endsRatherThanHangs)
                if chunk.isEmpty { break }
                received += chunk
            }
            try await writer.value
            #expect(received.count == message.count)
            let intact = received == message
            #expect(intact, "the echo differs from what was sent")
        }
    }

    @Test func cancellingAWaitingReadReturnsPromptlyAndLeavesTheSocketUsable() async throws {
        let (first, second) = try AsyncStreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        let reader = Task { try await first.read(upTo: 16) }
        try await Task.sleep(for: .milliseconds(50))
        let started = ContinuousClock.now
        reader.cancel()
        let result = await reader.result
        // Without cancellation the read would wait forever: the bound tells
        // "ended" from "never", not fast from slow.
        #expect(ContinuousClock.now - started < endsRatherThanHangs)
        #expect(throws: CancellationError.self) { try result.get() }
        // No waiter was left behind: the next read gets the next bytes.
        try await second.writeAll(Array("after".utf8))
        #expect(try await first.read(upTo: 16, timeout: endsRatherThanHangs) == Array("after".utf8))
    }

    /// The last bytes and the peer's close arrive as one readiness edge. A read
    /// that drains the bytes must not then wait for another edge: with edge
    /// triggering none comes, and the end of the stream would never be seen.
    @Test func endOfStreamArrivingWithTheLastBytesIsSeen() async throws {
        let loop = try EventLoop()
        let (first, second) = try StreamSocket.makePair()
        let reader = try AsyncStreamSocket(first, on: loop)
        defer { try? reader.close() }
        let payload = pattern(1000, seed: 9)
        let received = try await Task(executorPreference: loop) {
            async let all: [UInt8] = {
                var all: [UInt8] = []
                while true {
                    let chunk = try await reader.read(upTo: 65536, timeout: endsRatherThanHangs)
                    if chunk.isEmpty { return all }
                    all += chunk
                }
            }()
            // Let the reader find nothing and wait; then, without giving the loop
            // a chance to look in between, send the bytes and close.
            try await Task.sleep(for: .milliseconds(50))
            try second.writeAll(payload)
            try second.close()
            return try await all
        }.value
        #expect(received == payload)
    }

    @Test func aReadTimesOut() async throws {
        let (first, second) = try AsyncStreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        let started = ContinuousClock.now
        let error = await #expect(throws: SocketError.self) { try await first.read(upTo: 16, timeout: .milliseconds(100)) }
        #expect(error?.code == .timedOut)
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(100))
        #expect(elapsed < endsRatherThanHangs)
        // The socket still works after a timeout.
        try await second.writeAll([1, 2, 3])
        #expect(try await first.read(upTo: 16, timeout: endsRatherThanHangs) == [1, 2, 3])
    }

    @Test func closingWakesAWaitingReadWithClosed() async throws {
        let (first, second) = try AsyncStreamSocket.makePair()
        defer { try? second.close() }
        let reader = Task { try await first.read(upTo: 16) }
        try await Task.sleep(for: .milliseconds(50))
        try first.close()
        let error = await #expect(throws: SocketError.self) { try await reader.value }
        #expect(error?.code == .closed)
    }

    /// A writer whose peer does not read is suspended, holding nothing beyond
    /// the kernel's buffers; once the peer reads, every byte arrives in order.
    @Test func writerWaitsForASlowReader() async throws {
        let (writerSide, readerSide) = try AsyncStreamSocket.makePair()
        defer {
            try? writerSide.close()
            try? readerSide.close()
        }
        let message = pattern(32 << 20, seed: 3)
        let finished = Atomic<Bool>(false)
        let writer = Task {
            try await writerSide.writeAll(message)
            finished.store(true, ordering: .releasing)
            try writerSide.shutdown(.write)
        }
        try await Task.sleep(for: .milliseconds(200))
        let finishedEarly = finished.load(ordering: .acquiring)
        #expect(!finishedEarly, "32 MiB cannot fit in the socket buffers")
        var received: [UInt8] = []
        received.reserveCapacity(message.count)
        while true {
            let chunk = try await readerSide.read(upTo: 1 << 20, timeout: endsRatherThanHangs)
            if chunk.isEmpty { break }
            received += chunk
        }
        try await writer.value
        #expect(received.count == message.count)
        let intact = received == message
        #expect(intact, "the bytes differ from what was sent")
    }

    @Test func connectionsSequenceEndsWhenTheListenerCloses() async throws {
        let listener = try AsyncStreamListener.bind(to: try uniqueAbstractAddress("seq-end"))
        let accepted = Task {
            var count = 0
            for try await _ in listener.connections { count += 1 }
            return count
        }
        let client = try await AsyncStreamSocket.connect(to: listener.endpoint)
        defer { try? client.close() }
        try await Task.sleep(for: .milliseconds(100))
        try listener.close()
        #expect(try await accepted.value == 1)
    }

    @Test func tasksOnOtherExecutorsWorkToo() async throws {
        // No executor preference here: readiness resumes these tasks on the
        // global executor, a thread hop, and the result must be the same.
        let (first, second) = try AsyncStreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        for round in 0..<200 {
            try await first.writeAll([UInt8(truncatingIfNeeded: round)])
            #expect(try await second.read(upTo: 1, timeout: endsRatherThanHangs) == [UInt8(truncatingIfNeeded: round)])
        }
    }

    @Test func readableAndTryRead() async throws {
        let (first, second) = try AsyncStreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        var buffer = [UInt8](repeating: 0, count: 8)
        let nothing = try buffer.withUnsafeMutableBytes { try first.tryRead(into: $0) }
        #expect(nothing == nil)
        let waiter = Task { try await first.readable(timeout: endsRatherThanHangs) }
        try await Task.sleep(for: .milliseconds(50))
        try await second.writeAll([9, 8, 7])
        try await waiter.value
        let count = try buffer.withUnsafeMutableBytes { try first.tryRead(into: $0) }
        #expect(count == 3)
        #expect(Array(buffer[..<3]) == [9, 8, 7])
        try second.shutdown(.write)
        try await first.readable(timeout: endsRatherThanHangs)
        #expect(try buffer.withUnsafeMutableBytes { try first.tryRead(into: $0) } == 0)
    }

    @Test func aSeparateLoopServesItsOwnSockets() async throws {
        let loop = try EventLoop()
        try await withEchoServer(on: loop) { address in
            let client = try await AsyncStreamSocket.connect(to: address, on: loop)
            defer { try? client.close() }
            try await client.writeAll(Array("ping".utf8))
            #expect(try await client.read(upTo: 4, timeout: endsRatherThanHangs) == Array("ping".utf8))
        }
    }

    @Test func tasksPreferringTheLoopRunOnItsThread() async throws {
        let loop = try EventLoop()
        let onLoop = await Task(executorPreference: loop) { loop.inEventLoop }.value
        #expect(onLoop)
        #expect(!loop.inEventLoop)
    }

    @Test func datagramMessagesKeepTheirBoundaries() async throws {
        let receiver = try AsyncDatagramSocket.bind(to: try uniqueAbstractAddress("dgram-rx"))
        let sender = try AsyncDatagramSocket.bind(to: try uniqueAbstractAddress("dgram-tx"))
        defer {
            try? receiver.close()
            try? sender.close()
        }
        let sizes = [1, 1000, 60000, 0, 5]
        let target = try receiver.localAddress()
        for (index, size) in sizes.enumerated() {
            try await sender.send(pattern(size, seed: UInt8(index)), to: target)
        }
        var iterator = receiver.messages().makeAsyncIterator()
        for (index, size) in sizes.enumerated() {
            let message = try #require(try await iterator.next())
            #expect(message.bytes == pattern(size, seed: UInt8(index)))
            #expect(message.receipt.sender == (try sender.localAddress()))
            #expect(!message.receipt.isTruncated)
        }
    }

    @Test func datagramTruncationIsReported() async throws {
        let receiver = try AsyncDatagramSocket.bind(to: try uniqueAbstractAddress("dgram-trunc"))
        let sender = try AsyncDatagramSocket.unbound()
        defer {
            try? receiver.close()
            try? sender.close()
        }
        try await sender.send(pattern(100), to: try receiver.localAddress())
        var iterator = receiver.messages(maximumSize: 10).makeAsyncIterator()
        let message = try #require(try await iterator.next())
        #expect(message.bytes.count == 10)
        #expect(message.receipt.isTruncated)
        #expect(message.receipt.fullLength == 100)
    }

    @Test func seqpacketOverAsync() async throws {
        let listener = try AsyncSeqpacketListener.bind(to: try uniqueAbstractAddress("seq"))
        defer { try? listener.close() }
        let server = Task {
            let (connection, _) = try await listener.accept(timeout: endsRatherThanHangs)
            defer { try? connection.close() }
            var echoed = 0
            for try await message in connection.messages(maximumSize: 1 << 17) {
                try await connection.send(message.bytes)
                echoed += 1
            }
            return echoed
        }
        let client = try await AsyncSeqpacketSocket.connect(to: listener.endpoint)
        let messages = [pattern(3), pattern(70000, seed: 1), pattern(1, seed: 2)]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 17, alignment: 1)
        defer { buffer.deallocate() }
        for message in messages {
            try await client.send(message)
            let receipt = try await client.receive(into: buffer, timeout: endsRatherThanHangs)
            let echoed = Array(buffer[..<receipt.count])
            #expect(echoed.count == message.count)
            #expect(echoed == message, "the echo differs from what was sent")
        }
        try client.close()
        #expect(try await server.value == messages.count)
    }
}

@Suite("Async timers")
struct AsyncTimerTests {
    /// Operations that finish long before their timeout leave no timer behind
    /// for long: a busy loop of timed reads must not pile up deadlines.
    @Test func finishedOperationsDoNotPileUpTimers() async throws {
        let loop = try EventLoop()
        let (first, second) = try StreamSocket.makePair()
        let reader = try AsyncStreamSocket(first, on: loop)
        let writer = try AsyncStreamSocket(second, on: loop)
        defer {
            try? reader.close()
            try? writer.close()
        }
        let rounds = 5000
        try await Task(executorPreference: loop) {
            for round in 0..<rounds {
                // The read waits (and arms a one-hour timer) until the write lands.
                async let byte = reader.read(upTo: 1, timeout: .seconds(3600))
                try await Task.sleep(for: .microseconds(1))
                try await writer.writeAll([UInt8(truncatingIfNeeded: round)])
                #expect(try await byte == [UInt8(truncatingIfNeeded: round)])
            }
        }.value
        let pending = await loop.pendingTimerCount
        #expect(pending < 200, "\(pending) timers still pending after \(rounds) finished reads")
    }
}
