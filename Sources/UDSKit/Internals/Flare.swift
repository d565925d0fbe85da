import Synchronization

/// A one-shot event many tasks can wait for: once fired, it stays fired and
/// every waiter, present or future, goes on. A waiting task that is
/// cancelled stops waiting (and removes itself), so no continuation leaks.
final class Flare: Sendable {
    private struct State {
        var fired = false
        var nextKey: UInt64 = 0
        var waiters: [UInt64: UnsafeContinuation<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    var isFired: Bool { state.withLock { $0.fired } }

    /// Fires once; later calls do nothing.
    func fire() {
        let waiters = state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            guard !state.fired else { return [] }
            state.fired = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        // Resumed outside the lock: a resumed task may run here at once.
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the flare fired, or once the task is cancelled.
    func wait() async {
        let key = state.withLock { state -> UInt64 in
            defer { state.nextKey += 1 }
            return state.nextKey
        }
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[key] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: key) }?.resume()
        }
    }
}
