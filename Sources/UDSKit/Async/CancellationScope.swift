import Synchronization

/// Runs `body` with one cancellation handler for every socket wait in it.
///
/// Each wait of an async socket must end when its task is cancelled, so on
/// its own it installs a cancellation handler and removes it again: two
/// updates of the task's status records under the runtime's lock, about a
/// tenth of the CPU of a small request and its answer. Inside this scope the
/// task's waits instead tell one handler, installed once for the whole body,
/// which one is current. Cancellation behaves the same either way.
///
/// Use it around the body of a long-lived task of your own that serves a
/// socket (``AsyncServer`` does the same for its connections' tasks without
/// a scope):
///
///     group.addTask(executorPreference: connection.eventLoop) {
///         await withSocketCancellationScope {
///             // reads and writes on connection
///         }
///     }
///
/// Only the task that entered the scope uses it: child tasks started inside
/// (which inherit task-local values) install their own handler per wait.
public func withSocketCancellationScope<T>(_ body: () async throws -> T) async rethrows -> T {
    let scope = CancellationScope()
    // The handler outlives every wait in the body; `scope` is what they share.
    return try await withTaskCancellationHandler {
        try await CancellationScope.$current.withValue(scope, operation: body)
    } onCancel: {
        scope.cancel()
    }
}

/// What the waits of one task in ``withSocketCancellationScope(_:)`` share
/// with its cancellation handler: the wait now suspended, to end it.
final class CancellationScope: Sendable {
    @TaskLocal static var current: CancellationScope?

    /// The task that entered the scope, by address; only its waits use it.
    let owner: UInt
    private let waiting = Mutex(Waiting())

    private struct Waiting {
        /// Kept after its wait ends: the next wait is most likely on the same
        /// socket, and then noting it costs no reference count.
        var registration: Registration?
        var wait = ScopedWait()
    }

    init() {
        owner = Self.currentTask
    }

    /// The current task, by address (never 0 in a task).
    @inline(__always)
    static var currentTask: UInt { CurrentTask.address }

    /// Notes the wait `id` on `registration` as the one to end on
    /// cancellation; `false` if the task was cancelled already (see
    /// ``ScopedWait/enter(_:id:)``).
    func enter(_ registration: Registration, _ direction: Registration.Direction, id: UInt64) -> Bool {
        waiting.withLock { waiting in
            if waiting.registration !== registration { waiting.registration = registration }
            return waiting.wait.enter(direction, id: id)
        }
    }

    /// The task was cancelled: end the current wait, if one is suspended.
    /// Also what a wait outside a scope uses, with a scope of its own.
    func cancel() {
        let current = waiting.withLock { waiting -> (Registration, Registration.Direction, UInt64)? in
            guard let (direction, id) = waiting.wait.cancel(), let registration = waiting.registration else { return nil }
            return (registration, direction, id)
        }
        guard let (registration, direction, id) = current else { return }
        registration.abandon(direction, id: id, with: CancellationError())
    }
}

/// The one wait a cancellation handler ends: what a task's waits tell the
/// handler installed once for many of them (a ``CancellationScope``, or a
/// connection's owner task in ``AsyncServer``), kept under its owner's lock.
struct ScopedWait {
    private var direction = Registration.Direction.read
    private var id: UInt64 = 0
    /// Whether the wait `id` may still be suspended.
    private var isActive = false
    /// The task was cancelled: sticky, as a task's cancellation is, so that a
    /// wait noted after the handler ran ends too.
    private var cancelled = false

    /// Notes the wait `id` as the one to end on cancellation; `false` if the
    /// task was cancelled already, and the caller must end the wait itself
    /// (the handler ran before this wait was there to end). Answered here
    /// rather than by `Task.isCancelled`, which looks the task up through a
    /// generic closure: about 150 instructions, 4% of an async round trip.
    mutating func enter(_ direction: Registration.Direction, id: UInt64) -> Bool {
        self.direction = direction
        self.id = id
        isActive = !cancelled
        return !cancelled
    }

    /// The task was cancelled: the wait to end, if one may be suspended.
    /// Ending a wait that has already ended does nothing.
    mutating func cancel() -> (Registration.Direction, UInt64)? {
        cancelled = true
        guard isActive else { return nil }
        isActive = false
        return (direction, id)
    }
}
