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
public final class EventLoop: TaskExecutor, @unchecked Sendable {
    // @unchecked: `localJobs`, `timers` and `scratch` are touched only by the
    // loop thread; everything else is immutable or behind a Mutex or an Atomic.

    /// The loop most programs need: one thread, started on first use.
    public static let shared: EventLoop = {
        do {
            return try EventLoop()
        } catch {
            fatalError("UDSKit: cannot start the shared event loop: \(error)")
        }
    }()

    let selector: PlatformSelector
    private let registrations = Mutex<[UInt64: Registration]>([:])
    private let nextToken = Atomic<UInt64>(1)

    /// Jobs enqueued from other threads, and whether a wakeup is on its way.
    private let remoteJobs = Mutex<(jobs: [UnownedJob], wakeupPending: Bool)>(([], false))
    /// Whether `remoteJobs` may hold jobs: lets the loop skip the lock when not.
    private let hasRemoteJobs = Atomic<Bool>(false)
    /// Jobs enqueued on the loop thread itself: no lock, no wakeup.
    private var localJobs: [UnownedJob] = []
    private var timers = TimerHeap()
    private var scratch = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private let threadID = Atomic<UInt>(0)

    /// Starts a new loop on a thread of its own.
    /// - Throws: ``SocketError`` if the selector or the thread cannot be made.
    public init() throws(SocketError) {
        do {
            selector = try PlatformSelector()
        } catch {
            throw SocketError("epoll_create", errno: error)
        }
        localJobs.reserveCapacity(64)
        try startThread()
    }

    private func startThread() throws(SocketError) {
        let unmanaged = Unmanaged.passRetained(self)
        #if canImport(Darwin)
        var thread: pthread_t? = nil  // a pointer type on Darwin, an integer on Linux
        #else
        var thread = pthread_t()
        #endif
        let result = pthread_create(&thread, nil, { argument in
            #if canImport(Darwin)
            let loop = Unmanaged<EventLoop>.fromOpaque(argument).takeRetainedValue()
            #else
            let loop = Unmanaged<EventLoop>.fromOpaque(argument!).takeRetainedValue()
            #endif
            loop.run()
            return nil
        }, unmanaged.toOpaque())
        if result != 0 {
            unmanaged.release()
            throw SocketError("pthread_create", errno: Errno(rawValue: result))
        }
        #if canImport(Darwin)
        if let thread { pthread_detach(thread) }
        #else
        pthread_detach(thread)
        #endif
    }

    /// Whether the caller runs on this loop's thread.
    public var inEventLoop: Bool {
        threadID.load(ordering: .relaxed) == Self.currentThreadID
    }

    private static var currentThreadID: UInt {
        #if canImport(Darwin)
        UInt(bitPattern: pthread_self())
        #else
        UInt(pthread_self())
        #endif
    }

    // MARK: TaskExecutor

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if inEventLoop {
            localJobs.append(job)
            return
        }
        let wake = remoteJobs.withLock { state in
            state.jobs.append(job)
            hasRemoteJobs.store(true, ordering: .releasing)
            defer { state.wakeupPending = true }
            return !state.wakeupPending
        }
        if wake { selector.wakeup() }
    }

    // MARK: The loop

    private func run() {
        threadID.store(Self.currentThreadID, ordering: .relaxed)
        var batch: [UnownedJob] = []
        batch.reserveCapacity(64)
        while true {
            // Run what is ready; jobs they enqueue run in the next pass, after
            // the selector had a look, so one busy connection cannot starve others.
            swap(&batch, &localJobs)
            if hasRemoteJobs.load(ordering: .acquiring) {
                let remote = remoteJobs.withLock { state in
                    hasRemoteJobs.store(false, ordering: .relaxed)
                    defer { state = ([], false) }
                    return state.jobs
                }
                batch += remote
            }
            for job in batch {
                job.runSynchronously(on: asUnownedTaskExecutor())
            }
            batch.removeAll(keepingCapacity: true)

            let idle = localJobs.isEmpty && !hasRemoteJobs.load(ordering: .acquiring)
            let timeout = idle ? timers.millisecondsUntilNext(now: .now) : 0
            selector.wait(timeoutMilliseconds: timeout) { event in
                dispatch(event)
            }
            timers.fire(now: .now)
        }
    }

    private func dispatch(_ event: ReadinessEvent) {
        let registration = registrations.withLock { $0[event.token] }
        registration?.handle(event)
    }

    /// Lends the loop's scratch buffer, at least `minimumSize` bytes, to code
    /// running on the loop thread. A server can read into it and write from it
    /// within one synchronous stretch, so a connection that is idle holds no
    /// buffer at all. Never keep the pointer past `body`.
    public func withScratchBuffer<R, E: Error>(
        minimumSize: Int = 65536, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        precondition(inEventLoop, "withScratchBuffer is for code running on its loop's thread")
        if scratch.count < minimumSize {
            scratch.deallocate()
            scratch = .allocate(byteCount: minimumSize, alignment: 16)
        }
        return try body(UnsafeMutableRawBufferPointer(rebasing: scratch[..<minimumSize]))
    }

    // MARK: Registrations and timers

    func register(_ handle: SocketHandle) throws(SocketError) -> Registration {
        let token = nextToken.add(1, ordering: .relaxed).oldValue
        let registration = Registration(token: token, handle: handle, loop: self)
        registrations.withLock { $0[token] = registration }
        do {
            try selector.register(handle.descriptor, token: token)
        } catch {
            registrations.withLock { $0[token] = nil }
            throw handle.error("epoll_ctl", error)
        }
        return registration
    }

    func deregister(_ registration: Registration) {
        selector.deregister(registration.handle.descriptor)
        registrations.withLock { $0[registration.token] = nil }
    }

    /// Runs `timer`'s action on the loop thread at its deadline (or soon after),
    /// unless it is cancelled first.
    func schedule(_ timer: LoopTimer) {
        if inEventLoop {
            timers.insert(timer)
        } else {
            // Timers belong to the loop thread: hand the insertion over.
            Task(executorPreference: self) { self.timers.insert(timer) }
        }
    }

    /// How many timers wait, cancelled ones included (for tests).
    var pendingTimerCount: Int {
        get async { await Task(executorPreference: self) { self.timers.count }.value }
    }
}

/// An action at a deadline, on the loop thread. Cancelled timers stay in the
/// heap until they reach its top or the heap is compacted, so a busy program
/// whose operations finish well before their timeouts does not pile them up.
final class LoopTimer: Sendable {
    let deadline: ContinuousClock.Instant
    let action: @Sendable () -> Void
    /// 0 pending, 1 cancelled, 2 fired.
    private let state = Atomic<UInt8>(0)

    init(deadline: ContinuousClock.Instant, action: @escaping @Sendable () -> Void) {
        self.deadline = deadline
        self.action = action
    }

    /// Keeps the action from running; later calls do nothing.
    func cancel() {
        _ = state.compareExchange(expected: 0, desired: 1, ordering: .relaxed)
    }

    var isCancelled: Bool { state.load(ordering: .relaxed) == 1 }

    /// Runs the action unless it was cancelled.
    fileprivate func fire() {
        if state.compareExchange(expected: 0, desired: 2, ordering: .relaxed).exchanged { action() }
    }
}

/// Deadlines waiting on the loop thread, soonest first.
struct TimerHeap {
    private var entries: [LoopTimer] = []

    var count: Int { entries.count }

    mutating func insert(_ timer: LoopTimer) {
        // Before it grows past a point, drop what was cancelled: each completed
        // operation with a timeout leaves one behind.
        if entries.count >= 64 && entries.count.isPowerOfTwo { removeCancelled() }
        entries.append(timer)
        siftUp(entries.count - 1)
    }

    /// -1 if there is no timer: wait for readiness alone.
    mutating func millisecondsUntilNext(now: ContinuousClock.Instant) -> CInt {
        while let first = entries.first, first.isCancelled { _ = removeFirst() }
        guard let first = entries.first else { return -1 }
        let remaining = now.duration(to: first.deadline)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        // Round up, so a timer never fires early and spins.
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return CInt(clamping: milliseconds)
    }

    mutating func fire(now: ContinuousClock.Instant) {
        while let first = entries.first, first.deadline <= now {
            removeFirst().fire()
        }
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
