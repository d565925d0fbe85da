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
    private static let sources = Mutex<[Retained]>([])
    /// Set once a signal arrived: loops that wake up because their socket was
    /// closed check it to end quietly.
    static let received = Atomic<Bool>(false)

    static func install(_ action: @escaping @Sendable (_ name: String) -> Void) {
        for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                guard !received.exchange(true, ordering: .acquiringAndReleasing) else { return }
                action(name)
            }
            source.resume()
            sources.withLock { $0.append(Retained(source: source)) }
        }
    }
}
