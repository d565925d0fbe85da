import Foundation
import Logging
import Synchronization
import UDSKit

/// The connections a server without ``AsyncServer`` (`--io threads`,
/// `--io handlers`) has open, so that a shutdown can let them finish up to
/// the grace period and then close the rest: what `AsyncServer` does for the
/// async server, with the same log lines.
final class OpenConnections: Sendable {
    private struct State {
        var open: [Int: @Sendable () -> Void] = [:]
        /// The deadline has passed: a connection accepted after that is closed at once.
        var cut = false
    }
    private let state = Mutex(State())

    /// Counts a connection in; `close` closes it if it is still open at the deadline.
    func opened(_ id: Int, close: @escaping @Sendable () -> Void) {
        let cut = state.withLock { state in
            if !state.cut { state.open[id] = close }
            return state.cut
        }
        if cut { close() }
    }

    func closed(_ id: Int) {
        _ = state.withLock { $0.open.removeValue(forKey: id) }
    }

    /// Blocks the calling thread until every connection has ended or `grace`
    /// has passed, then closes those still open. The listener must already be
    /// closed, so that no connection is added while this waits.
    func drain(within grace: Duration, logger: Logger?) {
        let open = state.withLock { $0.open.count }
        logger?.info("shutting down: no longer accepting", metadata: ["connections": "\(open)", "grace": "\(grace)"])
        let deadline = ContinuousClock.now + grace
        // Polling: a shutdown happens once, and 10 ms is well inside any grace period.
        while ContinuousClock.now < deadline && state.withLock({ !$0.open.isEmpty }) {
            Thread.sleep(forTimeInterval: 0.01)
        }
        let remaining = state.withLock { state in
            state.cut = true
            return Array(state.open.values)
        }
        if !remaining.isEmpty {
            logger?.notice("shutdown deadline: closing the connections still open", metadata: ["connections": "\(remaining.count)"])
        }
        for close in remaining { close() }
        logger?.info("server stopped")
    }
}
