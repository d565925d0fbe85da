import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What every async socket is: a non-blocking descriptor registered with a
/// loop, and the try-then-wait loop that all its operations share.
final class AsyncCore: Sendable {
    let handle: SocketHandle
    let registration: Registration
    /// The read tick at which a `tryRead` last would have blocked; `readable()`
    /// waits for readiness after it. `unknownTick` until the first such call.
    private let readBlockedAt = Atomic<UInt64>(AsyncCore.unknownTick)
    private let writeBlockedAt = Atomic<UInt64>(AsyncCore.unknownTick)
    private static let unknownTick = UInt64.max

    /// Takes over `handle`, which must be non-blocking, and registers it with `loop`.
    init(handle: SocketHandle, loop: EventLoop) throws(SocketError) {
        self.handle = handle
        self.registration = try loop.register(handle)
    }

    /// Makes a blocking socket's descriptor non-blocking and registers it.
    convenience init(adopting handle: SocketHandle, loop: EventLoop) throws(SocketError) {
        try handle.call("fcntl") { Sys.setNonBlocking($0, true) }
        try self.init(handle: handle, loop: loop)
    }

    deinit {
        registration.close()
    }

    /// Closes the socket (removing its file), then fails the operations that
    /// were waiting, so none of them sees the socket half closed.
    func close() throws(SocketError) {
        let waiters = registration.detach()
        defer { waiters.resume() }
        try handle.close()
    }

    static func deadline(after timeout: Duration?) -> ContinuousClock.Instant? {
        timeout.map { ContinuousClock.now.advanced(by: $0) }
    }

    /// Tries `attempt` and, while the kernel says it would block, waits for
    /// readiness in `direction` and tries again.
    ///
    /// `exhausted` says a result left nothing more to do (a short stream read
    /// drained the socket; a short write filled it). Readiness is edge-triggered,
    /// so the next operation then waits for the next edge instead of spending a
    /// system call to hear "would block" (as a C epoll server does, and tokio).
    @inline(__always)
    func perform<R>(
        _ direction: Registration.Direction, _ operation: String, deadline: ContinuousClock.Instant?,
        exhausted: (R) -> Bool = { _ in false },
        _ attempt: (CInt) throws(SocketError) -> Result<R, Errno>
    ) async throws -> R {
        while true {
            if let value = try self.attempt(direction, operation, exhausted: exhausted, attempt) { return value }
            // It would block, as of the tick it marked: wait for a later edge.
            try await registration.wait(
                direction, after: blockedTick(direction), deadline: deadline, operation: operation)
        }
    }

    /// One attempt, without waiting: `nil` if it would block (or, by the
    /// last short read or write, is known to).
    func attempt<R>(
        _ direction: Registration.Direction, _ operation: String,
        exhausted: (R) -> Bool = { _ in false },
        _ attempt: (CInt) throws(SocketError) -> Result<R, Errno>
    ) throws(SocketError) -> R? {
        let observed = registration.tick(direction)
        if blockedTick(direction) == observed && !registration.hasEnded(direction) { return nil }
        let result = try handle.withDescriptor(operation) { (fd) throws(SocketError) in try attempt(fd) }
        switch result {
        case .success(let value):
            if exhausted(value) { markBlocked(direction, at: observed) }
            return value
        case .failure(.wouldBlock):
            markBlocked(direction, at: observed)
            registration.clearEnded(direction)
            return nil
        case .failure(let errno):
            throw handle.error(operation, errno)
        }
    }

    @inline(__always)
    private func blockedTick(_ direction: Registration.Direction) -> UInt64 {
        switch direction {
        case .read: readBlockedAt.load(ordering: .relaxed)
        case .write: writeBlockedAt.load(ordering: .relaxed)
        }
    }

    @inline(__always)
    private func markBlocked(_ direction: Registration.Direction, at tick: UInt64) {
        switch direction {
        case .read: readBlockedAt.store(tick, ordering: .relaxed)
        case .write: writeBlockedAt.store(tick, ordering: .relaxed)
        }
    }

    /// Waits until an operation in `direction` may succeed. Readiness can be a
    /// false positive: the next attempt may still say it would block.
    func ready(_ direction: Registration.Direction, deadline: ContinuousClock.Instant?, operation: String) async throws {
        let blockedAt = blockedTick(direction)
        guard blockedAt != Self.unknownTick, !registration.hasEnded(direction) else { return }
        try await registration.wait(direction, after: blockedAt, deadline: deadline, operation: operation)
    }

    /// A stream read that returned less than asked (but not the end) drained the socket.
    static func drained(_ requested: Int) -> (Int) -> Bool {
        { count in count > 0 && count < requested }
    }

    /// A write that took less than offered filled the socket.
    static func filled(_ offered: Int) -> (Int) -> Bool {
        { count in count < offered }
    }

    // MARK: Attempts shared by the socket types

    /// Reads stream data, keeping descriptors that ride on it (see `SocketHandle.read`).
    @inline(__always)
    func readAttempt(_ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Result<Int, Errno> {
        let result: Result<Int, Errno>
        if handle.keepsDescriptors.load(ordering: .relaxed) {
            switch try handle.receiveAttempt(
                fd, into: buffer, wantSender: false, descriptorCapacity: ControlMessages.maximumDescriptors)
            {
            case .success(let (message, descriptors)):
                if !descriptors.isEmpty { handle.keep(descriptors) }
                result = .success(message.count)
            case .failure(let errno):
                result = .failure(errno)
            }
        } else {
            result = Sys.receive(fd, buffer)
        }
        // close() shuts the socket down to wake readers: that is not the peer's EOF.
        if case .success(0) = result, handle.isClosed { throw handle.error("read", code: .closed) }
        return result
    }

    func receiveAttempt(
        _ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer, wantSender: Bool
    ) throws(SocketError) -> Result<ReceivedMessage, Errno> {
        let capacity = handle.keepsDescriptors.load(ordering: .relaxed) ? ControlMessages.maximumDescriptors : 0
        switch try handle.receiveAttempt(fd, into: buffer, wantSender: wantSender, descriptorCapacity: capacity) {
        case .success(let (message, descriptors)):
            if !descriptors.isEmpty { handle.keep(descriptors) }
            return .success(message)
        case .failure(let errno):
            return .failure(errno)
        }
    }

    /// Sends `buffer` with `descriptors` attached (to `address` if given);
    /// checked before any system call.
    func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [CInt], to address: UnixAddress?, needsData: Bool,
        deadline: ContinuousClock.Instant?
    ) async throws -> Int {
        try handle.validate(descriptors, with: buffer, needsData: needsData)
        return try await perform(.write, "sendmsg", deadline: deadline) {
            ControlMessages.send($0, buffer, descriptors: descriptors, to: address)
        }
    }

    /// Receives with room for the kernel's limit of descriptors, after those
    /// that plain reads kept; on failure the kept ones are put back.
    func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool, deadline: ContinuousClock.Instant?
    ) async throws -> (ReceivedMessage, [ReceivedDescriptor]) {
        let earlier = try handle.takeKept()
        do {
            let (message, descriptors) = try await perform(.read, handle.receiveOperation, deadline: deadline) {
                (fd) throws(SocketError) in
                try handle.receiveAttempt(
                    fd, into: buffer, wantSender: wantSender, descriptorCapacity: ControlMessages.maximumDescriptors)
            }
            return (message, earlier + descriptors)
        } catch {
            handle.restoreKept(earlier)
            throw error
        }
    }

    func writeAll(_ buffer: UnsafeRawBufferPointer, deadline: ContinuousClock.Instant?) async throws {
        var remaining = buffer
        while !remaining.isEmpty {
            let written = try await perform(.write, "write", deadline: deadline, exhausted: Self.filled(remaining.count)) {
                Sys.send($0, remaining)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }

    /// Accepts the next connection the policy admits, as a new non-blocking
    /// handle (the caller registers it). Gets through the failures
    /// ``AcceptRecovery`` lists, pausing on the loop's own timers: a server
    /// out of descriptors must not need the global executor's threads.
    func accept(policy: AccessPolicy, deadline: ContinuousClock.Instant?) async throws -> (SocketHandle, UnixAddress) {
        var recovery = AcceptRecovery()
        while true {
            // Noted before the attempt: a connection that comes after it moves the tick.
            let observed = registration.tick(.read)
            switch try acceptOnce(policy: policy, &recovery) {
            case .accepted(let connection, let peer):
                return (connection, peer)
            case .retry:
                continue
            case .wouldBlock:
                try await registration.wait(.read, after: blockedTick(.read), deadline: deadline, operation: "accept")
            case .awaitConnection:
                try await registration.wait(.read, after: observed, deadline: deadline, operation: "accept")
            case .pause(let pause):
                try await self.pause(pause, until: deadline, operation: "accept")
            }
        }
    }

    enum AcceptOutcome {
        case accepted(SocketHandle, UnixAddress)
        /// Refused by the policy, or skipped after a failure: try again.
        case retry
        case wouldBlock
        /// Out of descriptors with none pending: wait for the next connection.
        case awaitConnection
        case pause(Duration)
    }

    /// One accept, and what follows from it (``AcceptRecovery`` decides).
    func acceptOnce(policy: AccessPolicy, _ recovery: inout AcceptRecovery) throws(SocketError) -> AcceptOutcome {
        var accepted: CInt = -1
        let peer: UnixAddress?
        do throws(SocketError) {
            peer = try attempt(.read, "accept") { (fd) throws(SocketError) in
                var failure: Errno?
                let address = UnixAddress.fromKernel { address, length in
                    switch Sys.accept(fd, address, length, nonBlocking: true) {
                    case .success(let newFD): accepted = newFD
                    case .failure(let errno): failure = errno
                    }
                }
                return failure.map { .failure($0) } ?? .success(address)
            }
        } catch {
            switch handle.recover(from: error, &recovery) {
            case .retry: return .retry
            case .awaitConnection: return .awaitConnection
            case .pause(let pause): return .pause(pause)
            case .fail: throw error
            }
        }
        guard let peer else { return .wouldBlock }
        recovery.succeeded()
        let connection = SocketHandle(descriptor: accepted, kind: handle.kind, label: handle.currentLabel)
        return handle.admit(connection, by: policy) ? .accepted(connection, peer) : .retry
    }

    /// Waits `pause` on the loop's timers, but not past `deadline`.
    private func pause(_ pause: Duration, until deadline: ContinuousClock.Instant?, operation: String) async throws {
        var end = ContinuousClock.now.advanced(by: pause)
        if let deadline {
            if deadline <= .now { throw handle.error(operation, code: .timedOut) }
            end = min(end, deadline)
        }
        do {
            try await registration.loop.sleep(until: end)
        } catch let error as SocketError {
            throw handle.error(operation, code: error.code)
        }
    }

    /// Connects without blocking the loop. A Unix listener with a full backlog
    /// answers EAGAIN and gives no readiness event for it, so the attempt is
    /// repeated with a growing pause; an in-progress connection (TCP) is
    /// awaited through writability.
    func connect(to address: UnixAddress, deadline: ContinuousClock.Instant?) async throws {
        handle.currentLabel = address.description
        var pause = Duration.microseconds(100)
        while true {
            let observed = registration.tick(.write)
            let result = try handle.withDescriptor("connect") { fd in
                address.withSockaddr { Sys.connect(fd, $0, $1) }
            }
            switch result {
            case .success:
                return
            case .failure(.interrupted):
                // A Unix connect is not carried on by the kernel once
                // interrupted: nothing is connected yet, so ask again.
                continue
            case .failure(.wouldBlock):
                try await self.pause(pause, until: deadline, operation: "connect")
                pause = min(pause * 2, .milliseconds(50))
            case .failure(.nowInProgress):
                try await registration.wait(.write, after: observed, deadline: deadline, operation: "connect")
                switch Sys.socketError(handle.descriptor) {
                case .success(0): return
                case .success(let code): throw handle.error("connect", Errno(rawValue: code))
                case .failure(let errno): throw handle.error("connect", errno)
                }
            case .failure(let errno):
                throw handle.error("connect", errno)
            }
        }
    }
}
