import Synchronization
import SystemPackage

/// One socket's interest in readiness, and the tasks waiting for it.
///
/// Readiness is edge-triggered, so an event must never be lost between a call
/// that would block and the wait that follows it. Each direction has a tick
/// that every event advances: a caller notes the tick, tries the call, and on
/// would-block waits only if the tick has not moved; if it moved, readiness
/// came in between and the call is simply tried again (tokio's scheme).
///
/// Any number of tasks may wait in each direction. An event wakes all of them,
/// as tokio does: readiness is a state, not a token that one waiter could
/// consume and hand on. A woken task that finds nothing (another one took the
/// bytes or the connection) notes the new tick and waits again, so no waiter
/// is stranded, at the price of a retry per extra waiter per event.
final class Registration: Sendable {
    enum Direction {
        case read, write
    }

    let handle: SocketHandle
    let loop: EventLoop

    private let readTick = Atomic<UInt64>(0)
    private let writeTick = Atomic<UInt64>(0)
    /// Sticky: the kernel reported the end of the peer's stream (or an error),
    /// and with edge triggering it will not report it again, so a read must not
    /// wait for another edge (tokio keeps its read-closed bit the same way).
    private let readEnded = Atomic<Bool>(false)
    private let waiters = Mutex(Waiters())
    /// How many tasks are listed in `waiters`: an event finds none without
    /// the lock. Kept under the lock; read after the ticks moved.
    private let waiterCount = Atomic<Int>(0)
    /// Runs inline at every event, on the loop thread; set and read only
    /// there (see ``AsyncCore/setReadinessHandler(_:)``).
    nonisolated(unsafe) private var readinessHandler: (@Sendable (Readiness) -> Void)?
    /// Whether a handler is set, readable from any thread: a close must drop
    /// the handler, which usually holds the socket and so this registration.
    private let hasReadinessHandler = Atomic<Bool>(false)
    /// The task whose waits share one cancellation handler (see
    /// ``adoptOwner()``), by address; 0: none. Only that task stores it, so
    /// its own loads see their value, and any other task's load sees
    /// another number than its own.
    private let owner = Atomic<UInt>(0)

    fileprivate struct Waiter {
        var id: UInt64
        /// What the waiting call is, for the error that ends it early.
        var operation: String
        var continuation: UnsafeContinuation<Void, any Error>
        /// The wait's deadline, cancelled when the wait ends another way.
        var timer: LoopTimer?

        /// Ends the wait: its deadline no longer matters.
        func resume(throwing error: (any Error)? = nil) {
            timer?.cancel()
            if let error { continuation.resume(throwing: error) } else { continuation.resume() }
        }
    }

    /// The waiters of one direction. Most sockets have at most one, so the
    /// first lives inline and only a second one allocates.
    fileprivate struct WaiterList {
        private var first: Waiter?
        private var others: [Waiter] = []

        var count: Int { first == nil ? 0 : 1 + others.count }

        mutating func append(_ waiter: Waiter) {
            if first == nil { first = waiter } else { others.append(waiter) }
        }

        /// Removes and returns the waiter `id`, if it still waits.
        mutating func remove(id: UInt64) -> Waiter? {
            if first?.id == id {
                let removed = first
                first = others.isEmpty ? nil : others.removeFirst()
                return removed
            }
            guard let index = others.firstIndex(where: { $0.id == id }) else { return nil }
            return others.remove(at: index)
        }

        /// Empties the list, handing back what it held.
        mutating func takeAll() -> WaiterList {
            defer { self = WaiterList() }
            return self
        }

        func resumeAll() {
            guard let first else { return }
            first.resume()
            for waiter in others { waiter.resume() }
        }

        /// Fails every waiter with `.closed`, naming its own operation.
        func failAll(closed handle: SocketHandle) {
            guard let first else { return }
            first.resume(throwing: handle.error(first.operation, code: .closed))
            for waiter in others { waiter.resume(throwing: handle.error(waiter.operation, code: .closed)) }
        }
    }

    private struct Waiters {
        var readers = WaiterList()
        var writers = WaiterList()
        var nextID: UInt64 = 0
        var closed = false
        /// The owner task's wait, for its cancellation handler.
        var ownerWait = ScopedWait()

        mutating func list(_ direction: Direction, _ body: (inout WaiterList) -> Waiter?) -> Waiter? {
            switch direction {
            case .read: body(&readers)
            case .write: body(&writers)
            }
        }
    }

    init(handle: SocketHandle, loop: EventLoop) {
        self.handle = handle
        self.loop = loop
    }

    /// What the selector reports for this registration: its address, so that
    /// an event finds it without a lookup or a lock. The loop keeps it alive
    /// until no event of the selector can name it any more.
    var token: UInt64 { UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())) }

    /// Hands `event` to the registration its token names, which the loop
    /// keeps alive meanwhile (so it is not retained for the call).
    @inline(__always)
    static func dispatch(_ event: ReadinessEvent) {
        Unmanaged<Registration>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(event.token))!)
            ._withUnsafeGuaranteedRef { $0.handle(event) }
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
        if event.readClosed { readEnded.store(true, ordering: .releasing) }
        // Sequentially consistent with the waiter's listing: either it sees
        // the tick move and does not wait, or this sees it listed. Wrapping
        // (ticks are only compared for equality): `add` traps on overflow and
        // so compiles to a compare-exchange loop, this to one locked add.
        if event.readable { readTick.wrappingAdd(1, ordering: .sequentiallyConsistent) }
        if event.writable { writeTick.wrappingAdd(1, ordering: .sequentiallyConsistent) }
        if let readinessHandler {
            readinessHandler(Readiness(readable: event.readable, writable: event.writable, readClosed: event.readClosed))
        }
        guard waiterCount.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let (readers, writers) = waiters.withLock { waiters in
            var readers = WaiterList()
            var writers = WaiterList()
            if event.readable { readers = waiters.readers.takeAll() }
            if event.writable { writers = waiters.writers.takeAll() }
            waiterCount.store(waiters.readers.count + waiters.writers.count, ordering: .sequentiallyConsistent)
            return (readers, writers)
        }
        readers.resumeAll()
        writers.resumeAll()
    }

    /// Sets the handler that runs at every event, on the loop thread.
    func setReadinessHandler(_ handler: (@Sendable (Readiness) -> Void)?) {
        precondition(loop.inEventLoop, "a readiness handler is set on its loop's thread")
        // The old handler is released after the assignment: its captures may
        // close this socket, which comes back here.
        let previous = readinessHandler.take()
        readinessHandler = handler
        hasReadinessHandler.store(handler != nil, ordering: .releasing)
        withExtendedLifetime(previous) {}
    }

    /// Drops the handler (on the loop thread), breaking the cycle of a handler
    /// that holds its own socket.
    private func dropReadinessHandler() {
        guard hasReadinessHandler.load(ordering: .acquiring) else { return }
        // Once the loop has stopped no thread reads the handler any more.
        if loop.inEventLoop || loop.isShutDown {
            let dropped = readinessHandler.take()
            hasReadinessHandler.store(false, ordering: .releasing)
            withExtendedLifetime(dropped) {}  // Released here, outside the access: see above.
        } else {
            Task(executorPreference: loop) { self.dropReadinessHandler() }
        }
    }

    /// Runs the readiness handler now, as if an event said `readiness`.
    func runReadinessHandler(_ readiness: Readiness) {
        readinessHandler?(readiness)
    }

    /// Makes the current task this socket's owner: its waits here tell the
    /// one cancellation handler the task installs around all of them, which
    /// calls ``cancelOwnerWait()``, instead of each installing its own. What
    /// ``AsyncServer`` does for a connection's task: no task-local scope, so
    /// none of its frames stays on an idle connection's task.
    func adoptOwner() {
        owner.store(CancellationScope.currentTask, ordering: .relaxed)
    }

    /// The owner task has ended (its address may name another task later).
    func releaseOwner() {
        owner.store(0, ordering: .relaxed)
    }

    /// The owner task was cancelled: end its wait here, if one is suspended;
    /// the waits it starts from now on end at once.
    func cancelOwnerWait() {
        guard let (direction, id) = waiters.withLock({ $0.ownerWait.cancel() }) else { return }
        abandon(direction, id: id, with: CancellationError())
    }

    /// Who ends a wait when its task is cancelled.
    private enum Canceller {
        /// The owner task's handler (``cancelOwnerWait()``).
        case owner
        /// The handler of the scope the task entered.
        case scope(CancellationScope)
    }

    /// Waits until readiness in `direction` moves past `observed`.
    /// - Throws: `CancellationError` if the task is cancelled, ``SocketError``
    ///   `.timedOut` at `deadline`, `.closed` if the socket closes meanwhile.
    @inline(__always)
    func wait(
        _ direction: Direction, after observed: UInt64, deadline: Deadline?,
        operation: String
    ) async throws {
        try await Self.wait(Unmanaged.passUnretained(self), direction, after: observed, deadline: deadline, operation: operation)
    }

    /// `wait`, holding the registration unretained: the caller's socket keeps
    /// it alive, and a strong reference held across the suspension costs a
    /// retain and a release per wait (three of each in `readable()`).
    @inline(__always)
    static func wait(
        _ registration: Unmanaged<Registration>, _ direction: Direction, after observed: UInt64, deadline: Deadline?,
        operation: String
    ) async throws {
        guard let canceller = registration._withUnsafeGuaranteedRef({ $0.sharedCanceller() }) else {
            return try await registration.takeUnretainedValue().waitWithOwnHandler(
                direction, after: observed, deadline: deadline, operation: operation)
        }
        // A handler installed once ends whichever wait is current. The
        // continuation without an isolation parameter: the isolated one first
        // hops to the caller's isolation (where this already runs), and on a
        // task with an executor preference every hop looks the preference up
        // under the task's status-record lock (3,467 to 3,106 instructions
        // per round trip of the async echo).
        try await _unsafeInheritExecutor_withUnsafeThrowingContinuation { continuation in
            registration._withUnsafeGuaranteedRef {
                $0.listOrResume(continuation, direction, after: observed, deadline: deadline, operation: operation, canceller: canceller)
            }
        }
    }

    /// Who ends a wait of the current task if it is cancelled, when that is
    /// a handler already installed: the owner's, or the entered scope's.
    /// The current task is looked up only where an owner or a scope is there
    /// to compare with it (a wait of neither kind, a client's say, pays only
    /// the task-local look-up, as before owners existed).
    @inline(__always)
    private func sharedCanceller() -> Canceller? {
        let owner = owner.load(ordering: .relaxed)
        if owner != 0 && owner == CancellationScope.currentTask { return .owner }
        if let scope = CancellationScope.current, scope.owner == CancellationScope.currentTask { return .scope(scope) }
        return nil
    }

    /// A wait outside a cancellation scope: a scope of its own, with its own
    /// handler. Kept apart, so that a scoped wait's frame (which an idle
    /// connection holds) has no room for this one's.
    @inline(never)
    private func waitWithOwnHandler(
        _ direction: Direction, after observed: UInt64, deadline: Deadline?,
        operation: String
    ) async throws {
        let scope = CancellationScope()
        try await withTaskCancellationHandler {
            // Without a hop first, as in `wait`.
            try await _unsafeInheritExecutor_withUnsafeThrowingContinuation { continuation in
                listOrResume(
                    continuation, direction, after: observed, deadline: deadline, operation: operation, canceller: .scope(scope))
            }
        } onCancel: {
            scope.cancel()
        }
    }

    /// Lists a waiter for `continuation` and tells `canceller` its ID, or resumes
    /// it at once: the socket closed, or readiness moved past `observed`
    /// while the caller was trying (or the direction ended, and no edge will
    /// ever come again), so the caller tries again. Synchronous, so that what
    /// it needs is not kept across the suspension.
    private func listOrResume(
        _ continuation: UnsafeContinuation<Void, any Error>, _ direction: Direction, after observed: UInt64,
        deadline: Deadline?, operation: String, canceller: Canceller
    ) {
        let listing: Listing = waiters.withLock { waiters in
            if waiters.closed { return .resume(handle.error(operation, code: .closed)) }
            // Listed first, then the tick checked: see `handle(_:)`.
            waiterCount.wrappingAdd(1, ordering: .sequentiallyConsistent)
            let current =
                direction == .read
                ? readTick.load(ordering: .sequentiallyConsistent)
                : writeTick.load(ordering: .sequentiallyConsistent)
            if current != observed || hasEnded(direction) {
                waiterCount.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                return .resume(nil)
            }
            waiters.nextID += 1
            let id = waiters.nextID
            let timer = deadline.map { deadline in
                // The timer lets go of the registration as soon as the wait
                // ends another way (it is cancelled then), so it never
                // keeps a dropped socket open.
                LoopTimer(deadline: deadline) { [self] _ in
                    abandon(direction, id: id, with: handle.error(operation, code: .timedOut))
                }
            }
            let waiter = Waiter(id: id, operation: operation, continuation: continuation, timer: timer)
            _ = waiters.list(direction) { list in
                list.append(waiter)
                return nil
            }
            let cancelled =
                switch canceller {
                case .owner: !waiters.ownerWait.enter(direction, id: id)
                case .scope(let scope): !scope.enter(self, direction, id: id)
                }
            return .listed(id: id, timer: timer, cancelled: cancelled)
        }
        switch listing {
        case .resume(let error?): continuation.resume(throwing: error)
        case .resume(nil): continuation.resume()
        case .listed(let id, let timer, let cancelled):
            // A task cancelled before its handler knew the ID had nothing to end.
            if cancelled { abandon(direction, id: id, with: CancellationError()) }
            // If the wait already ended, the timer is cancelled and harmless.
            if let timer { loop.schedule(timer) }
        }
    }

    private enum Listing {
        case resume((any Error)?)
        case listed(id: UInt64, timer: LoopTimer?, cancelled: Bool)
    }

    /// Resumes the waiter `id` with `error`, if it is still waiting.
    func abandon(_ direction: Direction, id: UInt64, with error: any Error) {
        let waiter = waiters.withLock { waiters in
            let removed = waiters.list(direction) { $0.remove(id: id) }
            if removed != nil { waiterCount.wrappingSubtract(1, ordering: .sequentiallyConsistent) }
            return removed
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
        let (first, readers, writers) = markClosed()
        if first { loop.deregister(self) }
        dropReadinessHandler()
        return DetachedWaiters(lists: [readers, writers], handle: handle)
    }

    /// The loop is shutting down and forgets this registration itself: fail
    /// the waiters, and make every later wait fail too.
    func loopStopped() {
        let (_, readers, writers) = markClosed()
        dropReadinessHandler()
        readers.failAll(closed: handle)
        writers.failAll(closed: handle)
    }

    private func markClosed() -> (first: Bool, readers: WaiterList, writers: WaiterList) {
        waiters.withLock { waiters in
            defer {
                waiters.closed = true
                waiterCount.store(0, ordering: .sequentiallyConsistent)
            }
            return (!waiters.closed, waiters.readers.takeAll(), waiters.writers.takeAll())
        }
    }

    struct DetachedWaiters {
        fileprivate let lists: [WaiterList]
        fileprivate let handle: SocketHandle

        func resume() {
            for list in lists { list.failAll(closed: handle) }
        }
    }
}
