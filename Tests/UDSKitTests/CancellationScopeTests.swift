import Synchronization
import Testing
@testable import UDSKit

/// Waits in `withSocketCancellationScope` share one cancellation handler; a
/// cancellation must still end exactly the wait it should, at once. Each
/// read has a generous timeout: a wait the scope failed to end then fails
/// with `.timedOut` instead of hanging the suite.
@Suite("Cancellation scopes")
struct CancellationScopeTests {
    /// Bounds here prove that a cancelled wait ended promptly, not how fast:
    /// a second on a loaded machine, against a read timeout of a minute.
    private static let prompt = Duration.seconds(10)

    @Test("a cancelled task's wait ends, after earlier waits in the scope completed")
    func cancelAfterCompletedWaits() async throws {
        let (socket, peer) = try AsyncStreamSocket.makePair()
        defer { try? peer.close() }
        let reads = StartCount()
        let reader = Task {
            try await withSocketCancellationScope {
                // Two reads that complete leave their waits noted in the scope;
                // the third must be the one the cancellation ends.
                for _ in 0..<3 {
                    _ = try await socket.read(upTo: 1, timeout: endsRatherThanHangs)
                    reads.value.add(1, ordering: .relaxed)
                }
            }
        }
        for expected in 1...2 {
            try await peer.writeAll([UInt8(expected)])
            while reads.value.load(ordering: .relaxed) < expected { try await Task.sleep(for: .milliseconds(1)) }
        }
        try await Task.sleep(for: .milliseconds(50))  // Let it reach the third wait.
        let clock = ContinuousClock()
        let start = clock.now
        reader.cancel()
        await #expect(throws: CancellationError.self) { try await reader.value }
        #expect(clock.now - start < Self.prompt)
        #expect(reads.value.load(ordering: .relaxed) == 2)
    }

    @Test("a task cancelled before it waits gets CancellationError at once")
    func alreadyCancelled() async throws {
        let (socket, peer) = try AsyncStreamSocket.makePair()
        defer { try? peer.close() }
        let reader = Task {
            try await withSocketCancellationScope {
                while !Task.isCancelled { await Task.yield() }
                _ = try await socket.read(upTo: 1, timeout: endsRatherThanHangs)
            }
        }
        reader.cancel()
        await #expect(throws: CancellationError.self) { try await reader.value }
    }

    /// A child task inherits the scope's task-local value, but not its
    /// cancellation: cancelling the child alone must end the child's wait.
    @Test("a child task in the scope is cancelled on its own")
    func childTaskUsesItsOwnHandler() async throws {
        let (socket, peer) = try AsyncStreamSocket.makePair()
        defer { try? peer.close() }
        let started = StartCount()
        let outcome: Result<Void, any Error> = await withSocketCancellationScope {
            await withTaskGroup(of: Result<Void, any Error>.self) { group in
                group.addTask {
                    started.value.add(1, ordering: .relaxed)
                    do {
                        _ = try await socket.read(upTo: 1, timeout: endsRatherThanHangs)
                        return .success(())
                    } catch {
                        return .failure(error)
                    }
                }
                while started.value.load(ordering: .relaxed) < 1 { try? await Task.sleep(for: .milliseconds(1)) }
                try? await Task.sleep(for: .milliseconds(50))
                group.cancelAll()
                return await group.next()!
            }
        }
        #expect(throws: CancellationError.self) { try outcome.get() }
    }

    @Test("after the scope ends, the task's waits are still cancellable")
    func waitAfterScopeEnded() async throws {
        let (socket, peer) = try AsyncStreamSocket.makePair()
        defer { try? peer.close() }
        let scoped = StartCount()
        let reader = Task {
            try await withSocketCancellationScope {
                _ = try await socket.read(upTo: 1, timeout: endsRatherThanHangs)
            }
            scoped.value.add(1, ordering: .relaxed)
            _ = try await socket.read(upTo: 1, timeout: endsRatherThanHangs)
        }
        try await peer.writeAll([1])
        while scoped.value.load(ordering: .relaxed) < 1 { try await Task.sleep(for: .milliseconds(1)) }
        try await Task.sleep(for: .milliseconds(50))
        reader.cancel()
        await #expect(throws: CancellationError.self) { try await reader.value }
    }

    @Test("the scope returns the body's value and rethrows its error")
    func valueAndError() async throws {
        let value = await withSocketCancellationScope { 42 }
        #expect(value == 42)
        await #expect(throws: SocketError.self) {
            try await withSocketCancellationScope { () throws in
                throw SocketError("read", code: .closed)
            }
        }
    }
}
