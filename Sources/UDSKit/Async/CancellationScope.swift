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
/// ``AsyncServer`` runs every connection's handler in such a scope. Use it
/// around the body of a long-lived task of your own that serves a socket:
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
    private let owner: UInt
    private let waiting = Mutex(Waiting())

    private struct Waiting {
        /// Kept after its wait ends: the next wait is most likely on the same
        /// socket, and then noting it costs no reference count.
        var registration: Registration?
        var direction = Registration.Direction.read
        var id: UInt64 = 0
        /// Whether the wait `id` may still be suspended.
        var isActive = false
        /// The task was cancelled: sticky, as a task's cancellation is, so
        /// that a wait listed after the handler ran ends too.
        var cancelled = false
    }

    init() {
        owner = Self.currentTask
    }

    /// The scope of the current task, if it entered one itself.
    static var ofCurrentTask: CancellationScope? {
        guard let scope = current, scope.owner == currentTask else { return nil }
        return scope
    }

    private static var currentTask: UInt {
        // The optional itself, reinterpreted (nil is 0): unwrapping it would
        // copy the task value through value witnesses, as its type is resilient.
        withUnsafeCurrentTask { task in unsafeBitCast(task, to: UInt.self) }
    }

    /// Notes the wait `id` as the one to end on cancellation; `false` if the
    /// task was cancelled already, and the caller must end the wait itself
    /// (the handler ran before this wait was there to end). Answered here
    /// rather than by `Task.isCancelled`, which looks the task up through a
    /// generic closure: about 150 instructions, 4% of an async round trip.
    func enter(_ registration: Registration, _ direction: Registration.Direction, id: UInt64) -> Bool {
        waiting.withLock { waiting in
            if waiting.registration !== registration { waiting.registration = registration }
            waiting.direction = direction
            waiting.id = id
            waiting.isActive = !waiting.cancelled
            return !waiting.cancelled
        }
    }

    /// The task was cancelled: end the current wait, if one is suspended.
    /// Also what a wait outside a scope uses, with a scope of its own.
    /// Ending a wait that has already ended does nothing.
    func cancel() {
        let current = waiting.withLock { waiting -> (Registration, Registration.Direction, UInt64)? in
            waiting.cancelled = true
            guard waiting.isActive, let registration = waiting.registration else { return nil }
            waiting.isActive = false
            return (registration, waiting.direction, waiting.id)
        }
        guard let (registration, direction, id) = current else { return }
        registration.abandon(direction, id: id, with: CancellationError())
    }
}
