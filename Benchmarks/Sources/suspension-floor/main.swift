// What one suspension and resumption of a task costs in the concurrency
// runtime itself, with nothing of UDSKit around it: tasks that prefer a
// one-thread executor suspend on a continuation, and that executor's thread
// resumes them, as UDSKit's event loop resumes a task whose socket became
// ready. Per cycle: the continuation, its resumption, the task's job queued
// and run, and the hop after the resumption.
//
//   swift run -c release --package-path Benchmarks suspension-floor [cycles per task]
import Dispatch
import Foundation
import Synchronization

private func currentThreadID() -> UInt {
    #if canImport(Darwin)
    UInt(bitPattern: pthread_self())
    #else
    UInt(pthread_self())
    #endif
}

/// An executor with one thread, which also resumes the suspended tasks.
/// Jobs queued from its own thread go to a plain array: no lock, no wakeup.
final class OneThreadExecutor: TaskExecutor, @unchecked Sendable {
    // Touched only on the executor's thread.
    private var local: [UnownedJob] = []
    private var running: [UnownedJob] = []
    var suspended: [UnsafeContinuation<Void, Never>] = []
    private var resuming: [UnsafeContinuation<Void, Never>] = []

    private let remote = Mutex<[UnownedJob]>([])
    private let hasRemote = Atomic<Bool>(false)
    private let wakeup = DispatchSemaphore(value: 0)
    private let threadID = Atomic<UInt>(0)

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if threadID.load(ordering: .relaxed) == currentThreadID() {
            local.append(job)
        } else {
            remote.withLock { $0.append(job) }
            hasRemote.store(true, ordering: .releasing)
            wakeup.signal()
        }
    }

    func start() {
        Thread.detachNewThread { [self] in
            threadID.store(currentThreadID(), ordering: .relaxed)
            let executor = asUnownedTaskExecutor()
            while true {
                if hasRemote.load(ordering: .acquiring) {
                    hasRemote.store(false, ordering: .relaxed)
                    local += remote.withLock { jobs in defer { jobs = [] }; return jobs }
                }
                swap(&running, &local)
                for index in running.indices { running[index].runSynchronously(on: executor) }
                running.removeAll(keepingCapacity: true)
                swap(&resuming, &suspended)
                for continuation in resuming { continuation.resume() }
                resuming.removeAll(keepingCapacity: true)
                if local.isEmpty && suspended.isEmpty && !hasRemote.load(ordering: .acquiring) { wakeup.wait() }
            }
        }
    }
}

let executor = OneThreadExecutor()
executor.start()

/// Suspends the current task until the executor's thread resumes it, the way
/// UDSKit's waits do: no hop to the caller's isolation first.
func suspendOnce() async {
    await _unsafeInheritExecutor_withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
        executor.suspended.append(continuation)
    }
}

let cyclesPerTask = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1])! : 200_000
print("| tasks | ns per suspension and resumption (median of 5) |")
print("|---|---|")
for tasks in [1, 10, 100] {
    var samples: [Double] = []
    for _ in 0..<5 {
        let cycles = max(cyclesPerTask / tasks, 1000)
        let started = DispatchTime.now().uptimeNanoseconds
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<tasks {
                group.addTask(executorPreference: executor) {
                    for _ in 0..<cycles { await suspendOnce() }
                }
            }
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started)
        samples.append(elapsed / Double(cycles * tasks))
    }
    print("| \(tasks) | \(Int(samples.sorted()[2].rounded())) |")
}
