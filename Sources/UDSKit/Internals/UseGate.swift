import Synchronization

/// Counts the calls using a descriptor and closes it once, after the last.
///
/// Every user `enter`s and `leave`s; `close` stops new entries. Whoever ends
/// up last (the closer, if nobody is inside; otherwise the last to leave)
/// is told to close the descriptor. So a number is never closed under a
/// running call, and never reused under one (Go's `fdMutex` solves the same
/// race).
struct UseGate: ~Copyable, Sendable {
    /// Bit 0: closed. The rest: the number of users inside, times two.
    private let state = Atomic<Int>(0)

    init() {}

    /// Lets one more user in; `false` once closed.
    @inline(__always)
    func enter() -> Bool {
        var current = state.load(ordering: .relaxed)
        while current & 1 == 0 {
            let (exchanged, original) = state.compareExchange(
                expected: current, desired: current + 2, ordering: .acquiring)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Lets a user out; `true` if it was the last after a close and must
    /// now close the descriptor.
    @inline(__always)
    func leave() -> Bool {
        // Wrapping: one locked subtract, where the trapping one is a
        // compare-exchange loop (the count never goes below zero).
        state.wrappingSubtract(2, ordering: .acquiringAndReleasing).newValue == 1
    }

    enum Closing {
        /// Someone closed already.
        case alreadyClosed
        /// Nobody is inside: close the descriptor now.
        case closeNow
        /// Users are inside: wake them; the last to leave closes.
        case usersInside
    }

    /// Stops new entries, once.
    func close() -> Closing {
        let previous = state.bitwiseOr(1, ordering: .acquiringAndReleasing).oldValue
        if previous & 1 != 0 { return .alreadyClosed }
        return previous == 0 ? .closeNow : .usersInside
    }

    /// Stops new entries if nobody is inside and nobody closed: the
    /// descriptor then belongs to the caller, who must not close it here.
    func closeIfIdle() -> Bool {
        state.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged
    }

    var isClosed: Bool { state.load(ordering: .relaxed) & 1 != 0 }
}
