import Logging
import Synchronization
import SystemPackage

/// Owns one socket descriptor and closes it exactly once.
///
/// Every operation holds a use count while it runs. `close()` marks the handle
/// closed, shuts the socket down so that blocked calls on other threads return,
/// and the last operation to finish closes the descriptor. So a descriptor
/// number is never closed while a call still uses it, and never reused under
/// a running call (Go's `fdMutex` solves the same race).
final class SocketHandle: Sendable {
    let descriptor: CInt
    let kind: SocketKind
    private let gate = UseGate()
    /// The path this socket created by binding, removed when it closes.
    private let boundFile = Mutex<BoundFile?>(nil)
    /// What errors name: the address the socket is bound or connected to.
    private let label: Mutex<String?>
    /// Plain reads use `recvmsg` and keep descriptors that arrive with the data
    /// (opt-in). Off, a plain read is a `recv`, and the kernel closes whatever
    /// descriptors ride on it, as in Rust, Go, Python and SwiftNIO: a peer
    /// cannot fill a process's table with descriptors it never asked for.
    let keepsDescriptors = Atomic<Bool>(false)
    /// Linux `SO_PASSCRED` is on: messages carry their sender's credentials.
    let receivesCredentials = Atomic<Bool>(false)
    /// Whom a listener tells how it got through accept failures (``BindOptions/onAcceptRecovery``).
    let acceptRecoveryHandler = Mutex<(@Sendable (AcceptRecoveryEvent) -> Void)?>(nil)
    /// Where a listener logs refusals and accept recovery (``BindOptions/logger``).
    let logger = Mutex<Logger?>(nil)
    /// Descriptors kept from plain reads, and how many were closed for lack of room.
    let kept = Mutex<KeptDescriptors>(KeptDescriptors())
    /// The timeouts of operations that name none (`setReadTimeout`), in
    /// nanoseconds; negative: none.
    private let defaultReadTimeout = Atomic<Int64>(-1)
    private let defaultWriteTimeout = Atomic<Int64>(-1)

    init(descriptor: CInt, kind: SocketKind, label: String? = nil) {
        self.descriptor = descriptor
        self.kind = kind
        self.label = Mutex(label)
    }

    deinit {
        // No operation can be running: each holds a reference.
        if !gate.isClosed {
            boundFile.withLock { $0.take() }?.removeIfStillOurs()
            _ = Sys.close(descriptor)
        }
    }

    var currentLabel: String? {
        get { label.withLock { $0 } }
        set { label.withLock { $0 = newValue } }
    }

    /// - Parameter destination: What the error names instead of this socket
    ///   (a datagram's destination).
    func error(_ operation: String, _ errno: Errno, naming destination: String? = nil) -> SocketError {
        // A call that failed because another thread closed the socket (which
        // shuts it down to wake this one) reports that, not EINVAL or EPIPE.
        let code: SocketError.Code =
            isClosed ? .closed : errno == .wouldBlock ? .timedOut : .system(errno)
        return SocketError(operation, address: destination ?? currentLabel, code: code)
    }

    func error(_ operation: String, code: SocketError.Code) -> SocketError {
        SocketError(operation, address: currentLabel, code: code)
    }

    /// Runs `body` with the descriptor, failing with `.closed` once closed.
    @inline(__always)
    func withDescriptor<R>(
        _ operation: String, _ body: (CInt) throws(SocketError) -> R
    ) throws(SocketError) -> R {
        guard gate.enter() else { throw error(operation, code: .closed) }
        defer { leave() }
        return try body(descriptor)
    }

    /// Runs one system call and turns its failure into a ``SocketError``.
    @inline(__always)
    func call<R>(_ operation: String, _ body: (CInt) -> Result<R, Errno>) throws(SocketError) -> R {
        guard gate.enter() else { throw error(operation, code: .closed) }
        defer { leave() }
        switch body(descriptor) {
        case .success(let value): return value
        case .failure(let errno): throw error(operation, errno)
        }
    }

    @inline(__always)
    private func leave() {
        if gate.leave() { _ = Sys.close(descriptor) }
    }

    var isClosed: Bool { gate.isClosed }

    /// Marks the file at `path` as created by this socket, to be removed on close.
    func adoptBoundFile(_ file: BoundFile) {
        boundFile.withLock { $0 = file }
    }

    /// Stops removing the bound file on close; returns whether one was adopted.
    @discardableResult
    func releaseBoundFile() -> Bool {
        boundFile.withLock { $0.take() } != nil
    }

    /// Closes the socket once; later calls do nothing. Removes the socket file
    /// this socket created, if the path still names it.
    func close(_ operation: String = "close") throws(SocketError) {
        let closing = gate.close()
        if case .alreadyClosed = closing { return }
        // Remove the name first: from here on no new peer should find it.
        boundFile.withLock { $0.take() }?.removeIfStillOurs()
        // Descriptors kept from plain reads go with the socket, not with the object.
        let kept = self.kept.withLock { kept in
            defer { kept = KeptDescriptors() }
            return kept.descriptors
        }
        kept.forEach { $0.close() }
        switch closing {
        case .closeNow:
            if case .failure(let errno) = Sys.close(descriptor) { throw error(operation, errno) }
        case .usersInside:
            // Wake calls blocked on other threads; the last one closes.
            _ = Sys.shutdown(descriptor, how: Sys.shutdownBoth)
        case .alreadyClosed:
            break
        }
    }
}

extension SocketHandle {
    /// The deadline of an operation in `direction`: `timeout` from now, or
    /// if it names none, the socket's default for that direction.
    @inline(__always)
    func deadline(_ timeout: Duration?, _ direction: Registration.Direction) -> Deadline? {
        if let timeout { return Deadline.now.advanced(by: timeout) }
        let nanoseconds =
            direction == .read
            ? defaultReadTimeout.load(ordering: .relaxed) : defaultWriteTimeout.load(ordering: .relaxed)
        return nanoseconds < 0 ? nil : Deadline.now.advanced(by: .nanoseconds(nanoseconds))
    }

    func setDefaultTimeout(_ timeout: Duration?, _ direction: Registration.Direction) throws(SocketError) {
        let operation = direction == .read ? "setReadTimeout" : "setWriteTimeout"
        guard !isClosed else { throw error(operation, code: .closed) }
        var nanoseconds: Int64 = -1
        if let timeout {
            guard timeout > .zero else { throw error(operation, code: .invalidArgument("a timeout must be positive")) }
            let (seconds, attoseconds) = timeout.components
            nanoseconds = seconds.multipliedReportingOverflow(by: 1_000_000_000).partialValue + attoseconds / 1_000_000_000
        }
        if direction == .read {
            defaultReadTimeout.store(nanoseconds, ordering: .relaxed)
        } else {
            defaultWriteTimeout.store(nanoseconds, ordering: .relaxed)
        }
    }

    /// Gives the descriptor up: from here on every operation fails with
    /// `.closed`, nothing is closed or removed, and the caller owns the number.
    /// Refused while another call is using it, since that call would go on
    /// using a number that is no longer this handle's.
    func release() throws(SocketError) -> CInt {
        guard gate.closeIfIdle() else {
            if isClosed { throw error("release", code: .closed) }
            throw error("release", code: .invalidArgument("another call is still using the socket"))
        }
        // The new owner decides about the socket file.
        boundFile.withLock { $0 = nil }
        // Descriptors kept from plain reads came with data, not with the socket.
        kept.withLock { kept in
            defer { kept = KeptDescriptors() }
            return kept.descriptors
        }.forEach { $0.close() }
        return descriptor
    }
}

/// Descriptors that came with data a plain read returned, held for the next
/// `receiveWithDescriptors`, up to one full message's worth.
struct KeptDescriptors: Sendable {
    static let limit = ControlMessages.maximumDescriptors
    var descriptors: [ReceivedDescriptor] = []
    var discarded = 0
}

/// A socket file this process created by `bind`, identified by device and inode,
/// so that it is removed only while the path still names that very file.
struct BoundFile: Sendable {
    let path: [UInt8]
    let device: UInt64
    let inode: UInt64

    init?(path: [UInt8]) {
        guard case .success(let status) = Sys.fileStatus(path: path) else { return nil }
        self.path = path
        self.device = UInt64(status.st_dev)
        self.inode = UInt64(status.st_ino)
    }

    func isStillOurs() -> Bool {
        guard case .success(let status) = Sys.fileStatus(path: path) else { return false }
        return UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }

    /// A successor that replaced the file keeps its socket.
    func removeIfStillOurs() {
        if isStillOurs() { _ = Sys.unlink(path: path) }
    }
}
