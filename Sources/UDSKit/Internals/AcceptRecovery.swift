import Synchronization
import SystemPackage

/// What a listener does after `accept` failed, decided once for the blocking
/// and the async listeners.
///
/// A server must outlive a full descriptor table, a memory squeeze and
/// clients that give up while queued: those failures are the kernel's
/// state, not the listener's, and they pass. A connection that aborted is
/// skipped at once. Out of descriptors, the listener sheds the connection it
/// cannot serve through a reserve descriptor (accepted and closed at once,
/// so its client hears "closed" instead of waiting, and readiness does not
/// spin); where that is not possible, it pauses, 5 ms doubling up to 1 s
/// (Go's `net/http` back-off), and the next success resets the pause.
struct AcceptRecovery {
    static let firstPause = Duration.milliseconds(5)
    static let longestPause = Duration.seconds(1)

    private var pause: Duration?

    enum Step {
        /// Try again now: the failure concerned one connection only.
        case retry
        /// Out of descriptors: shed one pending connection, then try again.
        case shed
        /// Out of resources: wait this long, then try again.
        case pause(Duration)
        /// Not a failure accept can get through: report it.
        case fail
    }

    mutating func step(after errno: Errno, canShed: Bool) -> Step {
        switch errno {
        // The connection was reset or aborted while queued; Linux also
        // passes pending network errors of a TCP connection on to accept.
        case .connectionAbort, .interrupted, .protocolError, .networkDown, .networkUnreachable,
            .noRouteToHost, .hostIsDown, .protocolNotAvailable:
            return .retry
        case .tooManyOpenFiles, .tooManyOpenFilesInSystem:
            return canShed ? .shed : .pause(nextPause())
        case .noBufferSpace, .noMemory:
            return .pause(nextPause())
        default:
            return .fail
        }
    }

    /// After a shed or a pause that did not help, the next pause is longer.
    mutating func nextPause() -> Duration {
        let current = pause.map { min($0 * 2, Self.longestPause) } ?? Self.firstPause
        pause = current
        return current
    }

    mutating func succeeded() { pause = nil }
}

/// One descriptor held open (`/dev/null`) so that a process out of
/// descriptors can still accept a pending connection to close it: the
/// classic way (libev's documentation, nginx) to shed load at the limit
/// instead of leaving clients queued and readiness firing.
///
/// One per process, opened when the first listener listens: by the time
/// descriptors run out, it is too late to open one.
final class ReserveDescriptor: Sendable {
    static let shared = ReserveDescriptor()

    /// -1 while not held (not yet opened, or lost to a race at the limit).
    private let descriptor = Mutex<CInt>(-1)

    /// Opens the reserve if it is not held.
    func ensureHeld() {
        descriptor.withLock { fd in
            if fd < 0 { fd = Sys.openReserve() }
        }
    }

    var isHeld: Bool { descriptor.withLock { $0 >= 0 } }

    enum Shedding {
        /// A pending connection was accepted and closed.
        case shed
        /// None is pending: the kernel refuses accept for want of a number
        /// before it looks at the queue, so wait for the next connection.
        case nothingPending
        /// The reserve is not held (another thread took the freed number).
        case unavailable
    }

    /// Frees the reserve, accepts one pending connection on `listener` and
    /// closes it, then takes the reserve back.
    func shed(_ listener: CInt) -> Shedding {
        descriptor.withLock { fd in
            guard fd >= 0 else {
                fd = Sys.openReserve()
                return .unavailable
            }
            // Only if one is pending: a blocking listener would wait here otherwise.
            guard case .success(true) = Sys.poll(listener, forWriting: false, timeoutMilliseconds: 0) else {
                return .nothingPending
            }
            _ = Sys.close(fd)
            fd = -1
            var outcome = Shedding.unavailable
            switch Sys.accept(listener, nil, nil, nonBlocking: true) {
            case .success(let accepted):
                _ = Sys.close(accepted)
                outcome = .shed
            case .failure(.wouldBlock):
                outcome = .nothingPending
            case .failure:
                break
            }
            fd = Sys.openReserve()
            return outcome
        }
    }
}

extension SocketHandle {
    /// Runs `attempt` (one `accept`) until it returns a connection, getting
    /// through the failures ``AcceptRecovery`` lists; blocking listeners
    /// pause by sleeping the thread.
    func acceptRecovering<Accepted>(
        deadline: Deadline?, _ attempt: () throws(SocketError) -> Accepted
    ) throws(SocketError) -> Accepted {
        var recovery = AcceptRecovery()
        while true {
            do {
                let accepted = try attempt()
                recovery.succeeded()
                return accepted
            } catch {
                switch recover(from: error, &recovery) {
                case .retry: continue
                case .awaitConnection:
                    try withDescriptor("accept") { (fd) throws(SocketError) in
                        try awaitReady(fd, .read, "accept", deadline: deadline)
                    }
                case .pause(let pause):
                    if let deadline, Deadline.now.advanced(by: pause) > deadline {
                        throw self.error("accept", code: .timedOut)
                    }
                    Sys.sleep(for: pause)
                case .fail: throw error
                }
            }
        }
    }

    enum AcceptRecoveryAction {
        case retry
        /// Out of descriptors with an empty queue: wait until a connection
        /// comes (to shed it, or to serve it if a number was freed by then).
        case awaitConnection
        case pause(Duration)
        case fail
    }

    /// Decides what follows `error` and does the shedding, telling the
    /// listener's handler what happened.
    func recover(from error: SocketError, _ recovery: inout AcceptRecovery) -> AcceptRecoveryAction {
        guard let errno = error.errno, !isClosed else { return .fail }
        switch recovery.step(after: errno, canShed: ReserveDescriptor.shared.isHeld) {
        case .retry:
            return .retry
        case .shed:
            switch (try? withDescriptor("accept") { ReserveDescriptor.shared.shed($0) }) ?? .unavailable {
            case .shed:
                reportAcceptRecovery(.shedConnection(error))
                return .retry
            case .nothingPending:
                return .awaitConnection
            case .unavailable:
                let pause = recovery.nextPause()
                reportAcceptRecovery(.pausing(error, pause))
                return .pause(pause)
            }
        case .pause(let pause):
            reportAcceptRecovery(.pausing(error, pause))
            return .pause(pause)
        case .fail:
            return .fail
        }
    }

    /// Applies `policy` to a new connection: `true` to hand it out. A peer
    /// whose credentials cannot be read is refused, like one the policy
    /// rejects; neither ends the accept loop.
    func admit(_ connection: SocketHandle, by policy: AccessPolicy) -> Bool {
        guard let admits = policy.admits else { return true }
        let credentials: PeerCredentials
        do {
            credentials = try connection.peerCredentials()
        } catch {
            try? connection.close()
            reportAcceptRecovery(.credentialsUnavailable(error))
            return false
        }
        if admits(credentials) { return true }
        try? connection.close()
        policy.onRefusal?(credentials)
        logRefusal(of: credentials)
        return false
    }
}
