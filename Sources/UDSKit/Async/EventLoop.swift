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

    /// Calls `action` on the loop thread at `deadline` (or soon after).
    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) {
        if inEventLoop {
            timers.insert(deadline, action)
        } else {
            // Timers belong to the loop thread: hand the insertion over.
            Task(executorPreference: self) { self.timers.insert(deadline, action) }
        }
    }
}

/// Deadlines waiting on the loop thread, soonest first.
struct TimerHeap {
    private var entries: [(deadline: ContinuousClock.Instant, action: @Sendable () -> Void)] = []

    mutating func insert(_ deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) {
        entries.append((deadline, action))
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].deadline < entries[parent].deadline else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    /// -1 if there is no timer: wait for readiness alone.
    func millisecondsUntilNext(now: ContinuousClock.Instant) -> CInt {
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
            let action = removeFirst()
            action()
        }
    }

    private mutating func removeFirst() -> @Sendable () -> Void {
        let action = entries[0].action
        let last = entries.removeLast()
        guard !entries.isEmpty else { return action }
        entries[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < entries.count && entries[left].deadline < entries[smallest].deadline { smallest = left }
            if right < entries.count && entries[right].deadline < entries[smallest].deadline { smallest = right }
            if smallest == parent { break }
            entries.swapAt(parent, smallest)
            parent = smallest
        }
        return action
    }
}
