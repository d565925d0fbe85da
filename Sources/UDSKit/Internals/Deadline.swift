/// A point in time on the continuous clock, as the duration since a fixed
/// origin. `ContinuousClock.Instant` is not frozen: an async function that
/// keeps one (an operation's deadline) across a suspension allocates it on
/// the task and copies it through value witnesses, several times per wait.
/// A `Duration` is two integers, laid out at compile time.
struct Deadline: Comparable, Sendable {
    private static let origin = ContinuousClock.now
    private let sinceOrigin: Duration

    private init(sinceOrigin: Duration) {
        self.sinceOrigin = sinceOrigin
    }

    /// Not inlined, here and in ``now``: an async function that computed
    /// with an `Instant` inline would allocate it on the task all the same.
    @inline(never)
    init(_ instant: ContinuousClock.Instant) {
        sinceOrigin = Self.origin.duration(to: instant)
    }

    static var now: Deadline {
        @inline(never) get { Deadline(.now) }
    }

    /// The deadline `timeout` from now; `nil` (wait forever) for no timeout.
    static func after(_ timeout: Duration?) -> Deadline? {
        timeout.map { now.advanced(by: $0) }
    }

    func advanced(by duration: Duration) -> Deadline {
        Deadline(sinceOrigin: sinceOrigin + duration)
    }

    func duration(to other: Deadline) -> Duration {
        other.sinceOrigin - sinceOrigin
    }

    static func < (lhs: Deadline, rhs: Deadline) -> Bool {
        lhs.sinceOrigin < rhs.sinceOrigin
    }
}
