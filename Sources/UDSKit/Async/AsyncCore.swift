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
    /// Operations done in a row without waiting: a peer that floods keeps
    /// every read succeeding, and the task reading it would never give its
    /// loop back to the other connections (tokio's coop budget solves the same).
    private let unsuspendedRun = Atomic<UInt32>(0)
    static let budget: UInt32 = 64

    /// Takes over `handle`, which must be non-blocking, and registers it with `loop`.
    init(handle: SocketHandle, loop: EventLoop) throws(SocketError) {
        self.handle = handle
        self.registration = try loop.register(handle)
    }

    /// Registers `handle` (non-blocking) with `loop`, closing it if that fails.
    static func registering(_ handle: SocketHandle, on loop: EventLoop) throws(SocketError) -> AsyncCore {
        do throws(SocketError) {
            return try AsyncCore(handle: handle, loop: loop)
        } catch {
            try? handle.close()
            throw error
        }
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

    /// Tries `attempt` and, while the kernel says it would block, waits for
    /// readiness in `direction` and tries again.
    ///
    /// `exhausted` says a result left nothing more to do (a short stream read
    /// drained the socket; a short write filled it). Readiness is edge-triggered,
    /// so the next operation then waits for the next edge instead of spending a
    /// system call to hear "would block" (as a C epoll server does, and tokio).
    @inline(__always)
    func perform<R>(
        _ direction: Registration.Direction, _ operation: String, deadline: Deadline?,
        exhausted: (R) -> Bool = { _ in false }, naming destination: String? = nil,
        _ attempt: (CInt) throws(SocketError) -> Result<R, Errno>
    ) async throws -> R {
        while true {
            if let value = try self.attempt(direction, operation, exhausted: exhausted, naming: destination, attempt) {
                // A load and a store, not an atomic add: tasks racing on one
                // socket only blur the count, and the add's locked
                // instruction would cost every operation.
                let run = unsuspendedRun.load(ordering: .relaxed) &+ 1
                unsuspendedRun.store(run, ordering: .relaxed)
                if run >= Self.budget {
                    // The budget is spent: let the loop run what else is ready first.
                    unsuspendedRun.store(0, ordering: .relaxed)
                    await Task.yield()
                }
                return value
            }
            // It would block, as of the tick it marked: wait for a later edge.
            unsuspendedRun.store(0, ordering: .relaxed)
            try await registration.wait(
                direction, after: blockedTick(direction), deadline: deadline, operation: operation)
        }
    }

    /// One attempt, without waiting: `nil` if it would block (or, by the
    /// last short read or write, is known to).
    @inline(__always)
    func attempt<R>(
        _ direction: Registration.Direction, _ operation: String,
        exhausted: (R) -> Bool = { _ in false }, naming destination: String? = nil,
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
            throw handle.error(operation, errno, naming: destination)
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
    /// Holds the core unretained (see ``Registration/wait(_:_:after:deadline:operation:)``):
    /// `core` must be kept alive by the caller, as its socket does.
    @inline(__always)
    static func ready(
        _ core: Unmanaged<AsyncCore>, _ direction: Registration.Direction, deadline: Deadline?, operation: String
    ) async throws {
        let (blockedAt, ended, registration) = core._withUnsafeGuaranteedRef {
            ($0.blockedTick(direction), $0.registration.hasEnded(direction), Unmanaged.passUnretained($0.registration))
        }
        guard blockedAt != unknownTick, !ended else { return }
        try await Registration.wait(registration, direction, after: blockedAt, deadline: deadline, operation: operation)
    }

    /// Whether a stream read of `count` bytes, of `requested`, drained the
    /// socket: less than asked, but not the end. Called from a closure literal
    /// at each call site: a closure returned from here would be allocated per call.
    @inline(__always)
    static func drains(_ count: Int, of requested: Int) -> Bool {
        count > 0 && count < requested
    }

    /// Whether a write that took `count` bytes, of `offered`, filled the socket.
    @inline(__always)
    static func fills(_ count: Int, of offered: Int) -> Bool {
        count < offered
    }

    // MARK: Operations shared by the async socket types

    /// Sends `buffer` with `descriptors` attached (to `address` if given);
    /// checked before any system call.
    func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [FileDescriptor], to address: UnixAddress?, needsData: Bool,
        deadline: Deadline?
    ) async throws -> Int {
        let numbers = try handle.validate(descriptors, with: buffer, needsData: needsData)
        return try await perform(.write, "sendmsg", deadline: deadline, naming: address?.description) {
            handle.sendWithDescriptorsAttempt($0, buffer, numbers, to: address)
        }
    }

    /// Receives one message of at most `maximumSize` bytes as an array.
    func receiveMessage(maximumSize: Int, deadline: Deadline?) async throws -> (bytes: [UInt8], receipt: ReceivedMessage) {
        var bytes = [UInt8](repeating: 0, count: maximumSize)
        let wantSender = handle.kind == .datagram
        let receipt = try await perform(.read, "recvmsg", deadline: deadline) { (fd) throws(SocketError) in
            try bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(SocketError) in try handle.messageAttempt(fd, buffer, wantSender: wantSender) }
            }.get()
        }
        bytes.removeSubrange(receipt.count...)
        return (bytes, receipt)
    }

    /// Receives with room for the kernel's limit of descriptors, after those
    /// that plain reads kept; on failure the kept ones are put back.
    func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool, deadline: Deadline?
    ) async throws -> (ReceivedMessage, [ReceivedDescriptor]) {
        try handle.requireUnix(handle.receiveOperation, "passing descriptors")
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

    func writeAll(_ buffer: UnsafeRawBufferPointer, deadline: Deadline?) async throws {
        var remaining = buffer
        while !remaining.isEmpty {
            let written = try await perform(.write, "write", deadline: deadline, exhausted: { Self.fills($0, of: remaining.count) }) {
                handle.writeAttempt($0, remaining)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }

    /// Accepts the next connection the policy admits, as a new non-blocking
    /// handle (the caller registers it). Gets through the failures
    /// ``AcceptRecovery`` lists, pausing on the loop's own timers: a server
    /// out of descriptors must not need the global executor's threads.
    func accept(policy: AccessPolicy, deadline: Deadline?) async throws -> (SocketHandle, Endpoint) {
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
        case accepted(SocketHandle, Endpoint)
        /// Refused by the policy, or skipped after a failure: try again.
        case retry
        case wouldBlock
        /// Out of descriptors with none pending: wait for the next connection.
        case awaitConnection
        case pause(Duration)
    }

    /// One accept, and what follows from it (``AcceptRecovery`` decides).
    func acceptOnce(policy: AccessPolicy, _ recovery: inout AcceptRecovery) throws(SocketError) -> AcceptOutcome {
        let accepted: (SocketHandle, Endpoint)?
        do throws(SocketError) {
            accepted = try attempt(.read, "accept") { (fd) throws(SocketError) in
                try handle.acceptAttempt(fd, nonBlocking: true)
            }
        } catch {
            switch handle.recover(from: error, &recovery) {
            case .retry: return .retry
            case .awaitConnection: return .awaitConnection
            case .pause(let pause): return .pause(pause)
            case .fail: throw error
            }
        }
        guard let (connection, peer) = accepted else { return .wouldBlock }
        recovery.succeeded()
        return handle.admit(connection, by: policy) ? .accepted(connection, peer) : .retry
    }

    /// Waits `pause` on the loop's timers, but not past `deadline`.
    private func pause(_ pause: Duration, until deadline: Deadline?, operation: String) async throws {
        var end = Deadline.now.advanced(by: pause)
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
    func connect(deadline: Deadline?, _ start: (CInt) -> Result<Void, Errno>) async throws {
        var pause = Duration.microseconds(100)
        while true {
            let observed = registration.tick(.write)
            let result = try handle.withDescriptor("connect") { fd in start(fd) }
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

    /// Connects a new async socket to `endpoint` on `loop`: a Unix address
    /// (optionally binding `localAddress` first), or TCP, trying each of the
    /// host's addresses in turn. The name lookup itself blocks, as in Go's
    /// and tokio's default resolvers for numeric and local names.
    static func connect(
        to endpoint: Endpoint, kind: SocketKind, from localAddress: UnixAddress?, bindOptions: BindOptions,
        deadline: Deadline?, on loop: EventLoop
    ) async throws -> AsyncCore {
        switch try SocketHandle.forConnecting(
            to: endpoint, kind: kind, from: localAddress, bindOptions: bindOptions, nonBlocking: true)
        {
        case .unix(let handle, let address):
            let core: AsyncCore
            do throws(SocketError) {
                core = try AsyncCore(handle: handle, loop: loop)
            } catch {
                try? handle.close()
                throw error
            }
            try await core.connect(deadline: deadline) { fd in address.withSockaddr { Sys.connect(fd, $0, $1) } }
            return core
        case .tcp(let addresses, let label):
            var attempts = TCPConnectAttempts<any Error>(label: label)
            for address in addresses {
                let handle = try attempts.open(for: address, nonBlocking: true)
                do {
                    let core = try AsyncCore(handle: handle, loop: loop)
                    do {
                        try await core.connect(deadline: deadline) { fd in address.withSockaddr { Sys.connect(fd, $0, $1) } }
                        try attempts.connected(handle)
                        return core
                    } catch {
                        try? core.close()
                        throw error
                    }
                } catch {
                    attempts.failed(handle, error)
                    if error is CancellationError { throw error }
                }
            }
            throw attempts.noneAccepted()
        }
    }
}

/// Runs `body` over a copy of `bytes` that stays in place across suspensions
/// (an array's own storage is only lent for a synchronous closure).
func withStableBytes<R>(
    _ bytes: some Sequence<UInt8>, _ body: (UnsafeRawBufferPointer) async throws -> R
) async throws -> R {
    let array = Array(bytes)
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: array.count, alignment: 1)
    defer { copy.deallocate() }
    array.withUnsafeBytes { copy.copyMemory(from: $0) }
    return try await body(UnsafeRawBufferPointer(copy))
}
