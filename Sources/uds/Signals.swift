#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CUDSKit
import Foundation
import Synchronization
import SystemPackage
import UDSKit

/// Runs `action` once when SIGINT or SIGTERM arrives, instead of dying at once,
/// so a server removes its socket file and a client its own.
///
/// The CLI owns its process, so it may change signal dispositions; the library
/// never does.
enum ShutdownSignals {
    private struct State {
        var prepared = false
        var action: (@Sendable (_ name: String) -> Void)?
        /// What a second signal does, for an action that takes its time.
        var second: (@Sendable (_ name: String) -> Void)?
        /// A signal that arrived before there was an action to run.
        var unhandled: String?
        /// The read end of the socket pair the handler writes to, until a
        /// reader takes it.
        var readEnd: CInt?
        /// The signal socket on the loop, when the loop is the reader: held
        /// here for the process's life.
        var loopReader: AsyncStreamSocket?
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
    ///
    /// The handler sends the signal's number over a socket pair, and a
    /// reader of our own takes it from there: a thread, started by the first
    /// ``install(_:onSecond:)``, or the program's event loop
    /// (``watch(on:)``). No thread pool is involved, so a server out of
    /// descriptors still shuts down cleanly; until a reader starts, the
    /// signals wait in the socket.
    static func prepare() {
        let first = state.withLock { state in
            defer { state.prepared = true }
            return !state.prepared
        }
        guard first else { return }
        let pipe = signalNumbers.withUnsafeBufferPointer { cudskit_forward_signals($0.baseAddress, CInt($0.count)) }
        guard pipe >= 0 else {
            report(SignalSetupFailed(errno: errno))
            return
        }
        state.withLock { $0.readEnd = pipe }
    }

    private static let signalNumbers: [CInt] = [SIGINT, SIGTERM]

    /// A process inherits the signal mask of the thread that started it; a
    /// test runner's pool thread blocks SIGINT and SIGTERM, and so would
    /// every thread here, leaving the signals pending forever. The reading
    /// thread takes them, whatever the mask it started with.
    private static func unblockSignals() {
        var wanted = sigset_t()
        sigemptyset(&wanted)
        for number in signalNumbers { sigaddset(&wanted, number) }
        pthread_sigmask(SIG_UNBLOCK, &wanted, nil)
    }

    /// Starts the reading thread, unless a reader took the socket already.
    private static func startThreadReader() {
        guard let pipe = state.withLock({ $0.readEnd.take() }) else { return }
        Thread.detachNewThread {
            unblockSignals()
            var byte: UInt8 = 0
            while true {
                let count = read(pipe, &byte, 1)
                if count == 1 {
                    deliver(byte)
                } else if count < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }

    /// Reads the signals on `loop`, which must be the calling thread's, with
    /// no thread of their own: for a program whose only thread is its loop
    /// (``EventLoop/runOnCurrentThread(_:)``). The actions then run on the
    /// loop. Call it before ``install(_:onSecond:)``; if it fails, the first
    /// install starts the reading thread after all.
    static func watch(on loop: EventLoop) throws(SocketError) {
        prepare()
        guard let pipe = state.withLock({ $0.readEnd.take() }) else { return }
        // The socket adopts a copy: a socket that fails to adopt its
        // descriptor closes it, and the thread reader still needs one then.
        let copy = dup(pipe)
        let reader: AsyncStreamSocket
        do throws(SocketError) {
            guard copy >= 0 else { throw SocketError("dup", code: .system(Errno(rawValue: errno))) }
            reader = try AsyncStreamSocket(adopting: FileDescriptor(rawValue: copy), on: loop)
        } catch {
            state.withLock { $0.readEnd = pipe }
            throw error
        }
        close(pipe)
        unblockSignals()
        state.withLock { $0.loopReader = reader }
        reader.keepsIncomingDescriptors = false
        reader.setReadinessHandler { _ in
            var bytes: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
            withUnsafeMutableBytes(of: &bytes) { buffer in
                // Until the socket is empty; its end (or error) only comes when the process goes.
                while let count = try? reader.tryRead(into: buffer), count > 0 {
                    for byte in buffer[..<count] { deliver(byte) }
                }
            }
        }
    }

    private struct SignalSetupFailed: Error, CustomStringConvertible {
        let errno: CInt
        var description: String { "sigaction(SIGINT, SIGTERM): \(String(cString: strerror(errno)))" }
    }

    /// Runs `action` at the first SIGINT or SIGTERM, or at once if one
    /// already arrived since ``prepare()``.
    /// `second` runs at the next signal: for an action that does not exit
    /// at once (a graceful shutdown), a second signal is how to insist.
    /// The action runs on the thread that reads signals: one that waits must
    /// return first, or the second signal waits for it.
    static func install(
        _ action: @escaping @Sendable (_ name: String) -> Void,
        onSecond second: (@Sendable (_ name: String) -> Void)? = nil
    ) {
        prepare()
        startThreadReader()
        let pending = state.withLock { state in
            state.action = action
            state.second = second
            return state.unhandled.take()
        }
        if let pending { action(pending) }
    }

    private static func deliver(_ number: UInt8) {
        deliver(CInt(number) == SIGINT ? "SIGINT" : "SIGTERM")
    }

    private static func deliver(_ name: String) {
        guard !received.exchange(true, ordering: .acquiringAndReleasing) else {
            state.withLock { $0.second }?(name)
            return
        }
        let action = state.withLock { state in
            if state.action == nil { state.unhandled = name }
            return state.action
        }
        action?(name)
    }
}

extension ShutdownSignals {
    private static let exiting = Atomic<Bool>(false)

    /// Exits with `status`, once: a second thread that gets here (a second
    /// signal while the command returns) waits for the first one's exit,
    /// since two threads in exit() at once corrupt the heap (AddressSanitizer
    /// saw a double free).
    static func exitProcess(_ status: Int32) -> Never {
        if exiting.exchange(true, ordering: .acquiringAndReleasing) {
            while true { Thread.sleep(forTimeInterval: 3600) }
        }
        Foundation.exit(status)
    }
}
