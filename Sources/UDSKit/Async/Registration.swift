import Synchronization
import SystemPackage

/// One socket's interest in readiness, and the tasks waiting for it.
///
/// Readiness is edge-triggered, so an event must never be lost between a call
/// that would block and the wait that follows it. Each direction has a tick
/// that every event advances: a caller notes the tick, tries the call, and on
/// would-block waits only if the tick has not moved; if it moved, readiness
/// came in between and the call is simply tried again (tokio's scheme).
final class Registration: Sendable {
    enum Direction {
        case read, write
    }

    let token: UInt64
    let handle: SocketHandle
    let loop: EventLoop

    private let readTick = Atomic<UInt64>(0)
    private let writeTick = Atomic<UInt64>(0)
    /// Sticky: the kernel reported the end of the peer's stream (or an error),
    /// and with edge triggering it will not report it again, so a read must not
    /// wait for another edge (tokio keeps its read-closed bit the same way).
    private let readEnded = Atomic<Bool>(false)
    private let waiters = Mutex(Waiters())

    fileprivate struct Waiter {
        var id: UInt64
        var continuation: UnsafeContinuation<Void, any Error>
        /// The wait's deadline, cancelled when the wait ends another way.
        var timer: LoopTimer?

        /// Ends the wait: its deadline no longer matters.
        func resume(throwing error: (any Error)? = nil) {
            timer?.cancel()
            if let error { continuation.resume(throwing: error) } else { continuation.resume() }
        }
    }

    private struct Waiters {
        var reader: Waiter?
        var writer: Waiter?
        var nextID: UInt64 = 0
        var closed = false
    }

    init(token: UInt64, handle: SocketHandle, loop: EventLoop) {
        self.token = token
        self.handle = handle
        self.loop = loop
    }

    /// The tick to note before trying a call in `direction`.
    @inline(__always)
    func tick(_ direction: Direction) -> UInt64 {
        switch direction {
        case .read: readTick.load(ordering: .acquiring)
        case .write: writeTick.load(ordering: .acquiring)
        }
    }

    /// Whether `direction` has ended: the next call will not block, so try it
    /// rather than wait. Only reads end this way; a write's end comes with an edge.
    @inline(__always)
    func hasEnded(_ direction: Direction) -> Bool {
        direction == .read && readEnded.load(ordering: .acquiring)
    }

    /// The call said "would block" after all (the error was consumed, say):
    /// wait for edges again rather than spin.
    @inline(__always)
    func clearEnded(_ direction: Direction) {
        if direction == .read { readEnded.store(false, ordering: .releasing) }
    }

    /// Called on the loop thread for each event: advance the ticks and resume
    /// whoever waits.
    func handle(_ event: ReadinessEvent) {
        let (reader, writer) = waiters.withLock { waiters in
            var reader: Waiter?
            var writer: Waiter?
            if event.readClosed { readEnded.store(true, ordering: .releasing) }
            if event.readable {
                readTick.add(1, ordering: .releasing)
                reader = waiters.reader.take()
            }
            if event.writable {
                writeTick.add(1, ordering: .releasing)
                writer = waiters.writer.take()
            }
            return (reader, writer)
        }
        reader?.resume()
        writer?.resume()
    }

    /// Waits until readiness in `direction` moves past `observed`.
    /// - Throws: `CancellationError` if the task is cancelled, ``SocketError``
    ///   `.timedOut` at `deadline`, `.closed` if the socket closes meanwhile.
    func wait(
        _ direction: Direction, after observed: UInt64, deadline: ContinuousClock.Instant?,
        operation: String
    ) async throws {
        // Set by the suspending closure; read by the cancellation handler.
        let waitID = Atomic<UInt64>(UInt64.max)
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                var timer: LoopTimer?
                let outcome: (any Error)?? = waiters.withLock { waiters in
                    if waiters.closed { return .some(handle.error(operation, code: .closed)) }
                    if Task.isCancelled { return .some(CancellationError()) }
                    // Readiness came while the caller was trying, or the direction
                    // ended and no edge will ever come again: try again.
                    if tick(direction) != observed || hasEnded(direction) { return .some(nil) }
                    waiters.nextID += 1
                    let id = waiters.nextID
                    timer = deadline.map { deadline in
                        // Weak: a pending timer must not keep a dropped socket open.
                        LoopTimer(deadline: deadline) { [weak self] in
                            guard let self else { return }
                            self.abandon(direction, id: id, with: self.handle.error(operation, code: .timedOut))
                        }
                    }
                    let waiter = Waiter(id: id, continuation: continuation, timer: timer)
                    if direction == .read { waiters.reader = waiter } else { waiters.writer = waiter }
                    waitID.store(id, ordering: .releasing)
                    return nil
                }
                switch outcome {
                case .some(.some(let error)): continuation.resume(throwing: error)
                case .some(.none): continuation.resume()
                case .none:
                    // If the wait already ended, the timer is cancelled and harmless.
                    if let timer { loop.schedule(timer) }
                }
            }
        } onCancel: {
            abandon(direction, id: waitID.load(ordering: .acquiring), with: CancellationError())
        }
    }

    /// Resumes the waiter `id` with `error`, if it is still waiting.
    private func abandon(_ direction: Direction, id: UInt64, with error: any Error) {
        let waiter: Waiter? = waiters.withLock { waiters in
            switch direction {
            case .read:
                guard waiters.reader?.id == id else { return nil }
                return waiters.reader.take()
            case .write:
                guard waiters.writer?.id == id else { return nil }
                return waiters.writer.take()
            }
        }
        waiter?.resume(throwing: error)
    }

    /// Stops watching, once: waiters fail with `.closed`, and no new wait starts.
    /// Must run before the descriptor is closed: once closed, its number may
    /// already name another socket, whose registration a late removal would drop.
    func close() {
        detach().resume()
    }

    /// Stops watching, once, and hands back the waiters to fail: the caller
    /// resumes them after it has finished closing, so that a task woken by the
    /// close finds the socket (and its file) already gone.
    func detach() -> DetachedWaiters {
        let (first, reader, writer) = waiters.withLock { waiters in
            defer { waiters.closed = true }
            return (!waiters.closed, waiters.reader.take(), waiters.writer.take())
        }
        if first { loop.deregister(self) }
        return DetachedWaiters(waiters: [reader, writer].compactMap { $0 }, error: handle.error("close", code: .closed))
    }

    struct DetachedWaiters {
        fileprivate let waiters: [Waiter]
        let error: SocketError

        func resume() {
            for waiter in waiters { waiter.resume(throwing: error) }
        }
    }
}
