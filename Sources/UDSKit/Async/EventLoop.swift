import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One thread that waits for socket readiness (epoll or kqueue) and runs the
/// tasks that prefer it.
///
/// It is a `TaskExecutor`: run a task with it as executor preference and the
/// task's code runs on this thread, where readiness arrives. A read that has
/// to wait suspends, the loop sees the socket become readable, resumes the
/// task in place, and the task reads and writes without ever changing thread.
///
///     let loop = EventLoop.shared
///     await withTaskExecutorPreference(loop) {
///         // accept, read and write here: no thread hops per message
///     }
///
/// Async sockets work from any task; tasks that prefer another executor pay a
/// thread hop when readiness wakes them.
///
/// A loop runs until ``shutdown()``: its thread holds it, so dropping the last
/// reference does not stop it. ``shared`` lives as long as the process.
public final class EventLoop: TaskExecutor, @unchecked Sendable {
    // @unchecked: `onLoop` is touched only by the loop thread; everything
    // else is immutable or behind a Mutex or an Atomic.

    /// The loop most programs need: one thread, started on first use, never shut down.
    public static let shared: EventLoop = {
        do {
            return try EventLoop()
        } catch {
            fatalError("UDSKit: cannot start the shared event loop: \(error)")
        }
    }()

    let selector: PlatformSelector
    /// Every live registration; `nil` once the loop stopped, so that nothing
    /// registers with a loop that no longer watches. Events do not look here:
    /// their token is the registration's address.
    private let registrations = Mutex<[ObjectIdentifier: Registration]?>([:])
    /// Registrations removed from the selector, kept alive until the loop has
    /// dispatched the batch of events that may still name them.
    private let retired = Mutex<[Registration]>([])
    private let hasRetired = Atomic<Bool>(false)

    private struct RemoteJobs {
        var jobs: [UnownedJob] = []
        var wakeupPending = false
        /// Set by ``shutdown()``: the loop finishes what is queued and stops.
        var stopRequested = false
        /// The thread has ended: jobs go to the global executor instead.
        var stopped = false
    }

    /// Jobs enqueued from other threads, and whether a wakeup is on its way.
    private let remoteJobs = Mutex(RemoteJobs())
    /// Whether `remoteJobs` may hold jobs or a stop request: lets the loop skip the lock when not.
    private let hasRemoteJobs = Atomic<Bool>(false)
    /// What only the loop thread touches. Behind a pointer rather than in
    /// stored properties: a class's `var` is checked for exclusive access at
    /// run time on every change, and a job is queued here per wake-up.
    private let onLoop: UnsafeMutablePointer<LoopThreadState>

    private struct LoopThreadState {
        /// Jobs enqueued on the loop thread itself: no lock, no wakeup.
        var jobs: [UnownedJob] = []
        var timers = TimerHeap()
        var scratch = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    }
    private let threadID = Atomic<UInt>(0)
    /// The loop's thread until someone joins it (or it detaches itself).
    private let thread = Mutex<LoopThread?>(nil)

    /// Starts a new loop on a thread of its own.
    /// - Throws: ``SocketError`` if the selector or the thread cannot be made.
    public convenience init() throws(SocketError) {
        try self.init(ownThread: true)
    }

    /// A loop on a thread of its own, or (`ownThread` false) one that the
    /// creating thread will run: ``runOnCurrentThread(_:)``.
    private init(ownThread: Bool) throws(SocketError) {
        do {
            selector = try PlatformSelector()
        } catch {
            throw SocketError("epoll_create", errno: error)
        }
        onLoop = .allocate(capacity: 1)
        onLoop.initialize(to: LoopThreadState())
        onLoop.pointee.jobs.reserveCapacity(64)
        guard ownThread else {
            // Jobs enqueued from here on (the first task's) are the loop's own.
            threadID.store(LoopThread.currentID, ordering: .relaxed)
            return
        }
        do {
            let started = try LoopThread.start { [self] in run() }
            thread.withLock { $0 = started }
        } catch {
            selector.close()
            throw error
        }
    }

    /// Runs `body` as a task on a new loop whose thread is the caller's,
    /// until `body` returns; then shuts the loop down (see ``shutdown()``)
    /// and returns what `body` returned, or throws what it threw.
    ///
    /// A program can then be a single thread, as a C epoll server is (tokio's
    /// current-thread runtime and SwiftNIO's `withCurrentThreadAsEventLoop`
    /// offer the same): sockets made on `loop` and tasks that prefer it run
    /// here. A process with one thread also pays less per system call: the
    /// kernel skips a reference count on the descriptor's file, and the C
    /// library its cancellation and locking steps. Call it from a thread that
    /// is no event loop's, such as the main thread (on a loop's thread it
    /// throws: that loop would stall); it blocks that thread.
    /// Tasks that still prefer the loop after `body` returned go on on the
    /// global executor, their sockets closed; so does `body` if another
    /// thread shuts the loop down first, and this returns when it does.
    /// - Throws: ``SocketError`` `.unsupported` on a thread that runs a loop
    ///   already, another if the selector cannot be made; else what `body` throws.
    public static func runOnCurrentThread<Value: Sendable>(
        _ body: sending @escaping (EventLoop) async throws -> Value
    ) throws -> Value {
        // A loop run inside another's job would stall that loop until it returned.
        guard !LoopThread.runsALoop else {
            throw SocketError("runOnCurrentThread", code: .unsupported("running a loop on a thread that runs one already is"))
        }
        let loop = try EventLoop(ownThread: false)
        let outcome = Mutex<Result<Value, any Error>?>(nil)
        Task(executorPreference: loop) {
            let result: Result<Value, any Error>
            do {
                result = .success(try await body(loop))
            } catch {
                result = .failure(error)
            }
            outcome.withLock { $0 = result }
            loop.requestStop()
        }
        loop.run()
        // The task stored its outcome before it asked the loop to stop,
        // unless another thread's shutdown() stopped it while the body was
        // waiting on something else: the body then goes on elsewhere (see
        // above), and this waits for it, polling, on that rare path.
        var pause: UInt32 = 1_000
        while true {
            if let result = outcome.withLock({ $0.take() }) { return try result.get() }
            LoopThread.sleep(microseconds: pause)
            pause = min(pause * 2, 10_000)
        }
    }

    deinit {
        onLoop.pointee.scratch.deallocate()
        onLoop.deinitialize(count: 1)
        onLoop.deallocate()
    }

    /// Whether the caller runs on this loop's thread.
    public var inEventLoop: Bool {
        threadID.load(ordering: .relaxed) == LoopThread.currentID
    }

    // MARK: TaskExecutor

    /// Runs `job` on the loop's thread: at once in the next pass if enqueued
    /// there, else after a wakeup; on the global executor once the loop stopped.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if inEventLoop {
            onLoop.pointee.jobs.append(job)
            return
        }
        let forward = remoteJobs.withLock { state in
            if state.stopped { return true }
            state.jobs.append(job)
            hasRemoteJobs.store(true, ordering: .releasing)
            if !state.wakeupPending {
                state.wakeupPending = true
                // Inside the lock: the loop closes its selector only after it
                // marked itself stopped under this lock.
                selector.wakeup()
            }
            return false
        }
        // A task that preferred a loop that has stopped goes on elsewhere,
        // rather than never running again.
        if forward { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }

    // MARK: Shutting down

    /// Stops the loop: sockets still registered fail their waiting and later
    /// operations with `.closed`, the jobs already queued run, then the thread
    /// ends and the selector's descriptors close. Waits for the thread to end
    /// unless called on it. Tasks that still prefer this loop afterwards run
    /// on the global executor. Later calls do nothing.
    /// - Throws: ``SocketError`` `.unsupported` for ``shared``, which other
    ///   code in the process may be using.
    public func shutdown() throws(SocketError) {
        if self === Self.shared {
            throw SocketError("shutdown", address: "EventLoop.shared", code: .unsupported("shutting down the shared loop is"))
        }
        requestStop()
        if inEventLoop { return }  // The thread detaches itself as it ends.
        if let thread = thread.withLock({ $0.take() }) {
            thread.join()
        } else {
            // Another caller joins it, or it already ended.
            while !remoteJobs.withLock({ $0.stopped }) { LoopThread.pause() }
        }
    }

    /// Asks the loop to finish what is queued and stop; returns at once.
    private func requestStop() {
        remoteJobs.withLock { state in
            guard !state.stopped, !state.stopRequested else { return }
            state.stopRequested = true
            hasRemoteJobs.store(true, ordering: .releasing)
            selector.wakeup()
        }
    }

    /// Whether ``shutdown()`` has finished: the thread ended.
    public var isShutDown: Bool { remoteJobs.withLock { $0.stopped } }

    // MARK: The loop

    private func run() {
        threadID.store(LoopThread.currentID, ordering: .relaxed)
        LoopThread.runsALoop = true
        var batch: [UnownedJob] = []
        batch.reserveCapacity(64)
        var stopping = false
        // Kept alive until the thread ends: the selector may still name them.
        var stranded: [Registration] = []
        let executor = asUnownedTaskExecutor()
        while true {
            // Run what is ready; jobs they enqueue run in the next pass, after
            // the selector had a look, so one busy connection cannot starve others.
            swap(&batch, &onLoop.pointee.jobs)
            if hasRemoteJobs.load(ordering: .acquiring) {
                let (remote, stopRequested) = remoteJobs.withLock { state in
                    hasRemoteJobs.store(false, ordering: .relaxed)
                    defer {
                        state.jobs = []
                        state.wakeupPending = false
                    }
                    return (state.jobs, state.stopRequested)
                }
                batch += remote
                if stopRequested && !stopping {
                    stopping = true
                    stranded = failRegistrations()
                }
            }
            // By index: iterating would copy the array, a retain and a release per pass.
            for index in batch.indices {
                batch[index].runSynchronously(on: executor)
            }
            batch.removeAll(keepingCapacity: true)

            let idle = onLoop.pointee.jobs.isEmpty && !hasRemoteJobs.load(ordering: .acquiring)
            if stopping && idle && finishStopping() { break }
            // Without timers the clock is not read at all.
            var timeout: CInt = 0
            if idle { timeout = onLoop.pointee.timers.isEmpty ? -1 : onLoop.pointee.timers.millisecondsUntilNext(now: .now) }
            selector.wait(timeoutMilliseconds: timeout) { event in
                Registration.dispatch(event)
            }
            // No event of that batch can name a retired registration any more.
            if hasRetired.load(ordering: .acquiring) { releaseRetired() }
            if !onLoop.pointee.timers.isEmpty {
                for timer in onLoop.pointee.timers.takeDue(now: .now) { timer.fire() }
            }
        }
        releaseRetired()
        withExtendedLifetime(stranded) {}
        threadID.store(0, ordering: .relaxed)
        LoopThread.runsALoop = false
        if let thread = thread.withLock({ $0.take() }) { thread.detach() }
    }

    /// Forgets every registration: their waiters fail with `.closed` (and
    /// resume, on this loop while it drains), later waits fail the same way.
    private func failRegistrations() -> [Registration] {
        let stranded = registrations.withLock { registrations in
            defer { registrations = nil }
            return registrations.map { Array($0.values) } ?? []
        }
        for registration in stranded { registration.loopStopped() }
        // Deadlines no longer matter; a sleeper wakes with `.closed`.
        for timer in onLoop.pointee.timers.takeAll() { timer.fire(loopStopped: true) }
        return stranded
    }

    private func releaseRetired() {
        let released = retired.withLock { retired in
            hasRetired.store(false, ordering: .relaxed)
            defer { retired = [] }
            return retired
        }
        withExtendedLifetime(released) {}
    }

    /// Stops for good if no job came in meanwhile; `false` to drain again.
    private func finishStopping() -> Bool {
        let stopped = remoteJobs.withLock { state in
            guard state.jobs.isEmpty else { return false }
            state.stopped = true
            return true
        }
        guard stopped else { return false }
        // Timers armed by the last jobs.
        for timer in onLoop.pointee.timers.takeAll() { timer.fire(loopStopped: true) }
        selector.close()
        onLoop.pointee.scratch.deallocate()
        onLoop.pointee.scratch = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        return true
    }

    /// Lends the loop's scratch buffer, page-aligned and at least `minimumSize` bytes, to code
    /// running on the loop thread. A server can read into it and write from it
    /// within one synchronous stretch, so a connection that is idle holds no
    /// buffer at all. Never keep the pointer past `body`.
    ///
    /// Inlinable, so that `body` is called directly in the caller's module:
    /// a generic call across modules passed its result indirectly, through
    /// a thunk (about 100 instructions per call, on a readiness handler's path).
    @inlinable
    public func withScratchBuffer<R, E: Error>(
        minimumSize: Int = 65536, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        try body(scratchBuffer(minimumSize: minimumSize))
    }

    /// The scratch buffer, grown to `minimumSize` if need be.
    @usableFromInline
    func scratchBuffer(minimumSize: Int) -> UnsafeMutableRawBufferPointer {
        precondition(inEventLoop, "withScratchBuffer is for code running on its loop's thread")
        if onLoop.pointee.scratch.count < minimumSize {
            onLoop.pointee.scratch.deallocate()
            // Page-aligned: the kernel copies into and out of it at every
            // read and write, and an unaligned destination made 64 KiB
            // streaming about 4% slower.
            onLoop.pointee.scratch = .allocate(byteCount: minimumSize, alignment: 4096)
        }
        return UnsafeMutableRawBufferPointer(rebasing: onLoop.pointee.scratch[..<minimumSize])
    }

    // MARK: Sleeping without the global executor

    /// Suspends until `deadline` on this loop's timers: unlike `Task.sleep`,
    /// it needs no thread of the global executor, which a server out of
    /// descriptors cannot count on.
    /// - Throws: `CancellationError` if the task is cancelled; ``SocketError``
    ///   `.closed` if the loop shuts down first.
    public func sleep(until instant: ContinuousClock.Instant) async throws {
        try await sleep(until: Deadline(instant))
    }

    func sleep(until deadline: Deadline) async throws {
        let sleeper = Sleeper()
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let timer = LoopTimer(deadline: deadline) { loopStopped in
                    sleeper.end(loopStopped ? SocketError("sleep", code: .closed) : nil)
                }
                if sleeper.start(continuation, timer: timer) { schedule(timer) }
            }
        } onCancel: {
            sleeper.end(CancellationError())
        }
    }

    /// Suspends for `duration`; see ``sleep(until:)``.
    public func sleep(for duration: Duration) async throws {
        try await sleep(until: ContinuousClock.now.advanced(by: duration))
    }

    // MARK: Registrations and timers

    func register(_ handle: SocketHandle) throws(SocketError) -> Registration {
        let registration = Registration(handle: handle, loop: self)
        let key = ObjectIdentifier(registration)
        let accepted = registrations.withLock { registrations in
            registrations?[key] = registration
            return registrations != nil
        }
        guard accepted else { throw handle.error("epoll_ctl", code: .closed) }
        do {
            try selector.register(handle.descriptor, token: registration.token)
        } catch {
            registrations.withLock { $0?[key] = nil }
            throw handle.error("epoll_ctl", error)
        }
        return registration
    }

    /// Removes `registration` from the selector; the loop lets go of it
    /// after the batch of events it is dispatching, which may still name it.
    func deregister(_ registration: Registration) {
        selector.deregister(registration.handle.descriptor)
        let removed = registrations.withLock { $0?.removeValue(forKey: ObjectIdentifier(registration)) }
        guard let removed else { return }
        retired.withLock { retired in
            retired.append(removed)
            hasRetired.store(true, ordering: .releasing)
        }
    }

    /// Runs `timer`'s action on the loop thread at its deadline (or soon after),
    /// unless it is cancelled first.
    func schedule(_ timer: LoopTimer) {
        if inEventLoop {
            onLoop.pointee.timers.insert(timer)
        } else {
            scheduleFromAnotherThread(timer)
        }
    }

    /// Timers belong to the loop thread: hand the insertion over. Never
    /// inlined: a task's creation holds a `TaskPriority?`, whose size is known
    /// only at run time, and an async function that inlined it would allocate
    /// room for one on its task at every call (two per socket wait).
    @inline(never)
    private func scheduleFromAnotherThread(_ timer: LoopTimer) {
        Task(executorPreference: self) { self.onLoop.pointee.timers.insert(timer) }
    }

    /// How many timers wait, cancelled ones included (for tests).
    var pendingTimerCount: Int {
        get async { await Task(executorPreference: self) { self.onLoop.pointee.timers.count }.value }
    }
}

/// One ``EventLoop/sleep(until:)``: ended once, by its timer, its
/// cancellation or the loop's shutdown, whichever comes first.
private final class Sleeper: Sendable {
    private struct State {
        var continuation: UnsafeContinuation<Void, any Error>?
        var timer: LoopTimer?
        /// How it ended, if that happened before it started (a cancelled task).
        var endedEarly: (any Error)??
        var finished = false
    }
    private let state = Mutex(State())

    /// Starts waiting; `false` if it already ended, and then it resumed at once.
    func start(_ continuation: UnsafeContinuation<Void, any Error>, timer: LoopTimer) -> Bool {
        let early: (any Error)?? = state.withLock { state in
            if let outcome = state.endedEarly { return .some(outcome) }
            state.continuation = continuation
            state.timer = timer
            return nil
        }
        guard let early else { return true }
        state.withLock { $0.finished = true }
        if let error = early { continuation.resume(throwing: error) } else { continuation.resume() }
        return false
    }

    /// Ends the sleep with `error` (or normally), unless it already ended.
    func end(_ error: (any Error)?) {
        let (continuation, timer) = state.withLock { state in
            guard let continuation = state.continuation.take() else {
                if !state.finished && state.endedEarly == nil { state.endedEarly = .some(error) }
                return (nil as UnsafeContinuation<Void, any Error>?, nil as LoopTimer?)
            }
            state.finished = true
            return (continuation, state.timer.take())
        }
        timer?.cancel()
        guard let continuation else { return }
        if let error { continuation.resume(throwing: error) } else { continuation.resume() }
    }
}

/// A group of event loops, one thread each: sockets spread over them, so a
/// server uses every core. Listeners bound on a group register accepted
/// connections with its loops in turn.
///
///     let group = try EventLoopGroup()           // one loop per core
///     let listener = try AsyncStreamListener.bind(to: address, on: group)
///     // serve each connection in a task that prefers its own loop:
///     // group.addTask(executorPreference: connection.eventLoop) { ... }
public final class EventLoopGroup: Sendable {
    /// The loops, each on its own thread.
    public let loops: [EventLoop]
    private let nextIndex = Atomic<Int>(0)

    /// Starts `loopCount` loops (by default one per online processor).
    public init(loopCount: Int = EventLoopGroup.processorCount) throws(SocketError) {
        guard loopCount > 0 else {
            throw SocketError("EventLoopGroup", code: .invalidArgument("a group needs at least one loop, not \(loopCount)"))
        }
        var loops: [EventLoop] = []
        for _ in 0..<loopCount {
            do {
                loops.append(try EventLoop())
            } catch {
                for loop in loops { try? loop.shutdown() }
                throw error
            }
        }
        self.loops = loops
    }

    /// The number of processors online: the default group size.
    public static var processorCount: Int { Sys.onlineProcessorCount }

    /// The next loop, round-robin.
    public func next() -> EventLoop {
        loops[nextIndex.add(1, ordering: .relaxed).oldValue % loops.count]
    }

    /// Shuts every loop down; see ``EventLoop/shutdown()``.
    public func shutdown() throws(SocketError) {
        for loop in loops { try loop.shutdown() }
    }
}

/// Where a socket finds its event loop: a loop itself, or a group that hands
/// out its loops in turn.
public protocol EventLoopSource: Sendable {
    /// The loop for the next socket.
    func next() -> EventLoop
}

extension EventLoop: EventLoopSource {
    /// This loop.
    public func next() -> EventLoop { self }
}

extension EventLoopGroup: EventLoopSource {}

/// The loop's own thread, joinable until joined or detached.
private struct LoopThread: @unchecked Sendable {
    // @unchecked: a pthread handle, used once by whoever takes it from its Mutex.
    #if canImport(Darwin)
    let handle: pthread_t
    #else
    let handle: pthread_t
    #endif

    static func start(_ body: @escaping @Sendable () -> Void) throws(SocketError) -> LoopThread {
        let box = Unmanaged.passRetained(Body(body))
        #if canImport(Darwin)
        var thread: pthread_t? = nil  // a pointer type on Darwin, an integer on Linux
        #else
        var thread = pthread_t()
        #endif
        let result = pthread_create(&thread, nil, { argument in
            #if canImport(Darwin)
            let body = Unmanaged<Body>.fromOpaque(argument).takeRetainedValue()
            #else
            let body = Unmanaged<Body>.fromOpaque(argument!).takeRetainedValue()
            #endif
            body.run()
            return nil
        }, box.toOpaque())
        if result != 0 {
            box.release()
            throw SocketError("pthread_create", errno: Errno(rawValue: result))
        }
        #if canImport(Darwin)
        return LoopThread(handle: thread!)
        #else
        return LoopThread(handle: thread)
        #endif
    }

    private final class Body: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    func join() { _ = pthread_join(handle, nil) }
    func detach() { _ = pthread_detach(handle) }

    static var currentID: UInt {
        #if canImport(Darwin)
        UInt(bitPattern: pthread_self())
        #else
        UInt(pthread_self())
        #endif
    }

    /// A short pause while waiting for another thread.
    static func pause() { _ = sched_yield() }

    /// A longer one, for a wait that may last.
    static func sleep(microseconds: UInt32) { _ = usleep(microseconds) }

    /// Whether the calling thread is running a loop: set by the loop for its
    /// time on the thread, in a thread-specific slot.
    static var runsALoop: Bool {
        get { pthread_getspecific(runningKey) != nil }
        set { pthread_setspecific(runningKey, newValue ? UnsafeRawPointer(bitPattern: 1) : nil) }
    }

    private static let runningKey: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "UDSKit: no thread-specific key left for the event loop")
        return key
    }()
}

/// An action at a deadline, on the loop thread. Cancelled timers stay in the
/// heap until they reach its top or the heap is compacted, so a busy program
/// whose operations finish well before their timeouts does not pile them up.
final class LoopTimer: Sendable {
    let deadline: Deadline
    /// Runs with `true` when the loop stopped before the deadline. Dropped
    /// when the timer is cancelled or fires, so that what it captures (a
    /// waiting socket) is not kept alive by a timer that no longer matters.
    private let action: Mutex<(@Sendable (_ loopStopped: Bool) -> Void)?>
    /// 0 pending, 1 cancelled, 2 fired.
    private let state = Atomic<UInt8>(0)

    init(deadline: Deadline, action: @escaping @Sendable (_ loopStopped: Bool) -> Void) {
        self.deadline = deadline
        self.action = Mutex(action)
    }

    /// Keeps the action from running; later calls do nothing.
    func cancel() {
        if state.compareExchange(expected: 0, desired: 1, ordering: .relaxed).exchanged {
            action.withLock { $0 = nil }
        }
    }

    var isCancelled: Bool { state.load(ordering: .relaxed) == 1 }

    /// Runs the action unless it was cancelled.
    fileprivate func fire(loopStopped: Bool = false) {
        guard state.compareExchange(expected: 0, desired: 2, ordering: .relaxed).exchanged else { return }
        action.withLock { $0.take() }?(loopStopped)
    }
}

/// Deadlines waiting on the loop thread, soonest first.
struct TimerHeap {
    private var entries: [LoopTimer] = []

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }

    mutating func insert(_ timer: LoopTimer) {
        // Before it grows past a point, drop what was cancelled: each completed
        // operation with a timeout leaves one behind.
        if entries.count >= 64 && entries.count.isPowerOfTwo { removeCancelled() }
        entries.append(timer)
        siftUp(entries.count - 1)
    }

    /// -1 if there is no timer: wait for readiness alone.
    mutating func millisecondsUntilNext(now: Deadline) -> CInt {
        while let first = entries.first, first.isCancelled { _ = removeFirst() }
        guard let first = entries.first else { return -1 }
        let remaining = now.duration(to: first.deadline)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        // Round up, so a timer never fires early and spins.
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return CInt(clamping: milliseconds)
    }

    /// Removes the timers due at `now`, soonest first, for the caller to fire
    /// once this heap is no longer being changed: an action may arm a timer.
    mutating func takeDue(now: Deadline) -> [LoopTimer] {
        var due: [LoopTimer] = []
        while let first = entries.first, first.deadline <= now { due.append(removeFirst()) }
        return due
    }

    /// Removes every timer (the loop is stopping), soonest first.
    mutating func takeAll() -> [LoopTimer] {
        var all: [LoopTimer] = []
        while !entries.isEmpty { all.append(removeFirst()) }
        return all
    }

    private mutating func removeCancelled() {
        let before = entries.count
        entries.removeAll { $0.isCancelled }
        guard entries.count != before else { return }
        // Rebuild the heap order (Floyd's method: linear time).
        for index in stride(from: entries.count / 2 - 1, through: 0, by: -1) { siftDown(index) }
    }

    private mutating func removeFirst() -> LoopTimer {
        let first = entries[0]
        let last = entries.removeLast()
        if !entries.isEmpty {
            entries[0] = last
            siftDown(0)
        }
        return first
    }

    private mutating func siftUp(_ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].deadline < entries[parent].deadline else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ index: Int) {
        var parent = index
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < entries.count && entries[left].deadline < entries[smallest].deadline { smallest = left }
            if right < entries.count && entries[right].deadline < entries[smallest].deadline { smallest = right }
            if smallest == parent { return }
            entries.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

extension Int {
    fileprivate var isPowerOfTwo: Bool { self > 0 && self & (self - 1) == 0 }
}
