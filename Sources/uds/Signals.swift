#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Synchronization

/// Runs `action` once when SIGINT or SIGTERM arrives, instead of dying at once,
/// so a server removes its socket file and a client its own.
///
/// The CLI owns its process, so it may change signal dispositions; the library
/// never does.
enum ShutdownSignals {
    /// Kept only so the sources stay alive; never used again.
    private struct Retained: @unchecked Sendable { let source: any DispatchSourceSignal }
    private struct State {
        var sources: [Retained] = []
        var action: (@Sendable (_ name: String) -> Void)?
        /// A signal that arrived before there was an action to run.
        var unhandled: String?
    }
    private static let state = Mutex(State())
    /// Set once a signal arrived: loops that wake up because their socket was
    /// closed check it to end quietly.
    static let received = Atomic<Bool>(false)

    /// Starts catching SIGINT and SIGTERM before there is anything to close.
    /// A server calls it before it binds: a signal sent as soon as its socket
    /// accepts connections is then neither fatal (the default action, which
    /// leaves a stale socket file) nor dropped (SIG_IGN); ``install(_:)`` runs
    /// its action for it. Later calls do nothing.
    static func prepare() {
        let started = state.withLock { state in
            guard state.sources.isEmpty else { return false }
            for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { deliver(name) }
                source.resume()
                state.sources.append(Retained(source: source))
            }
            return true
        }
        if started { waitUntilCaught() }
    }

    /// Runs `action` at the first SIGINT or SIGTERM, or at once if one
    /// already arrived since ``prepare()``.
    static func install(_ action: @escaping @Sendable (_ name: String) -> Void) {
        prepare()
        let pending = state.withLock { state in
            state.action = action
            return state.unhandled.take()
        }
        if let pending { action(pending) }
    }

    private static func deliver(_ name: String) {
        guard !received.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let action = state.withLock { state in
            if state.action == nil { state.unhandled = name }
            return state.action
        }
        action?(name)
    }

    /// On Linux, libdispatch replaces SIG_IGN with its own handler on its
    /// manager thread, some time after `resume()`; a signal in between would be
    /// dropped. Waits (at most about a second) until the handlers are in place.
    private static func waitUntilCaught() {
        #if canImport(Glibc)
        for number in [SIGINT, SIGTERM] {
            for _ in 0..<1000 {
                var current = sigaction()
                guard sigaction(number, nil, &current) == 0 else { break }
                // Neither SIG_DFL (0) nor SIG_IGN (1): a handler.
                if unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) > 1 { break }
                usleep(1000)
            }
        }
        #endif
    }
}
