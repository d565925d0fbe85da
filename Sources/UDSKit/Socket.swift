import SystemPackage

/// What every UDSKit socket and listener has, blocking or async: one
/// descriptor that it owns, closes once, or gives up.
///
/// The concrete types add what their kind does: ``StreamSocket`` and
/// ``AsyncStreamSocket`` (byte streams over a Unix socket or TCP),
/// ``SeqpacketSocket``, ``DatagramSocket`` and their async twins (messages),
/// and the listeners (``Listener``). Members shared by several types are
/// written once, here and in the protocol extensions of ``PeerSocket``,
/// ``ByteStreamSocket``, ``MessageSocket``, ``AsyncMessageSocket`` and
/// ``AsyncSocket``.
///
/// All members may be called from any thread. ``close()`` wakes calls that
/// other threads or tasks are waiting in, and the descriptor is closed when
/// the last of them returns, so its number is never reused under a call.
public class Socket: @unchecked Sendable {
    // Unchecked: every stored property is an immutable reference to a
    // Sendable object; the class is not open, so no subclass adds state
    // outside this module.
    let handle: SocketHandle
    /// For async sockets: the registration with their loop.
    let core: AsyncCore?

    init(handle: SocketHandle) {
        self.handle = handle
        self.core = nil
    }

    init(core: AsyncCore) {
        self.handle = core.handle
        self.core = core
    }

    /// The async machinery; only async types are made with one.
    var asyncCore: AsyncCore {
        guard let core else { preconditionFailure("\(type(of: self)) is not an async socket") }
        return core
    }

    /// Runs `body` with the async machinery borrowed: a call through
    /// `asyncCore` retains and releases it around the call (the optimizer does
    /// not see that this socket keeps it), two reference counts per `tryRead`
    /// on a readiness handler's path.
    @inline(__always)
    func withAsyncCore<R, E: Error>(_ body: (AsyncCore) throws(E) -> R) throws(E) -> R {
        let result: Result<R, E> = Unmanaged.passUnretained(asyncCore)._withUnsafeGuaranteedRef { core in
            Result { () throws(E) in try body(core) }
        }
        return try result.get()
    }

    /// The async machinery, unretained, for an async call of this socket's
    /// that keeps the socket (and so the core) alive while it waits.
    @inline(__always)
    final var unmanagedCore: Unmanaged<AsyncCore> { withAsyncCore { Unmanaged.passUnretained($0) } }

    /// The loop of an async socket, with its core borrowed. Not generic:
    /// ``AsyncSocket/eventLoop`` is (a protocol extension), and called from
    /// another module it runs unspecialized, where the generic borrowing
    /// looked up `Result`'s metadata at every call; here it is specialized.
    final var coreLoop: EventLoop { withAsyncCore { $0.registration.loop } }

    /// The descriptor, for system calls UDSKit does not wrap; it stays owned
    /// by this socket (see ``withDescriptor(_:_:)`` and ``release()``).
    public var descriptor: FileDescriptor { FileDescriptor(rawValue: handle.descriptor) }

    /// Runs `body` with the descriptor held open, for system calls UDSKit does
    /// not wrap (`splice`, say): a ``close()`` on another thread meanwhile only
    /// shuts the socket down, which wakes `body`'s blocking calls, and the
    /// descriptor is closed once `body` returns, so it is never reused under it.
    /// - Parameters:
    ///   - operation: The name errors give, such as `splice`.
    ///   - body: What to do with the descriptor; it must not close it.
    /// - Throws: `.closed` if the socket is closed already, or what `body` throws.
    public func withDescriptor<R>(
        _ operation: String, _ body: (FileDescriptor) throws(SocketError) -> R
    ) throws(SocketError) -> R {
        try handle.withDescriptor(operation) { (fd) throws(SocketError) in try body(FileDescriptor(rawValue: fd)) }
    }

    /// Closes the socket, once; later calls do nothing. Waiting operations
    /// fail with `.closed`. A socket file this socket created by binding is
    /// removed, if the path still names it; an adopted socket never removes one.
    ///
    /// The corresponding C function is `close`.
    public func close() throws(SocketError) {
        if let core { try core.close() } else { try handle.close() }
    }

    /// Gives up the descriptor, ending UDSKit's ownership: the caller must
    /// close it. Nothing is closed or removed (the socket file, if any, is
    /// now the caller's), the socket leaves its event loop, and every later
    /// operation here fails with `.closed`. The descriptor keeps its flags:
    /// an async socket's is non-blocking.
    ///
    /// This is how another library (SwiftNIO's `withConnectedSocket`, say)
    /// takes over a socket UDSKit made or adopted.
    /// - Throws: `.closed` if already closed or released;
    ///   `.invalidArgument` while another call is using the descriptor.
    public func release() throws(SocketError) -> FileDescriptor {
        let fd = try handle.release()
        core?.registration.detach().resume()
        return FileDescriptor(rawValue: fd)
    }

    /// This side's endpoint: a Unix address (unnamed unless bound), or for
    /// TCP the local address and port, which is how to learn the port a
    /// listener on port 0 got. The corresponding C function is `getsockname`.
    public func localEndpoint() throws(SocketError) -> Endpoint { try handle.localEndpoint() }

    /// This side's Unix address (unnamed unless bound).
    /// The corresponding C function is `getsockname`.
    /// - Throws: `.unsupported` on TCP; see ``localEndpoint()``.
    public func localAddress() throws(SocketError) -> UnixAddress { try handle.localAddress() }
}

// MARK: - Sockets that talk to a peer

/// A socket that exchanges data with peers: stream, seqpacket and datagram
/// sockets, blocking and async. What they share is written once here.
public protocol PeerSocket: Socket {}

extension PeerSocket {
    /// The peer's endpoint. The corresponding C function is `getpeername`.
    public func peerEndpoint() throws(SocketError) -> Endpoint { try handle.peerEndpoint() }

    /// The peer's Unix address (unnamed unless the peer bound one).
    /// The corresponding C function is `getpeername`.
    /// - Throws: `.unsupported` on TCP; see ``peerEndpoint()``.
    public func peerAddress() throws(SocketError) -> UnixAddress { try handle.peerAddress() }

    /// The peer's process, user and group IDs, as the kernel recorded them at
    /// connect time, with its supplementary groups and security label where
    /// the kernel has them. The corresponding C call is
    /// `getsockopt(SO_PEERCRED)` on Linux, `getpeereid` and `LOCAL_PEERPID` on macOS.
    /// - Throws: `.unsupported` on TCP, which carries no credentials.
    public func peerCredentials() throws(SocketError) -> PeerCredentials { try handle.peerCredentials() }

    /// The peer process by pidfd (Linux 6.5+ `SO_PEERPIDFD`): it cannot be
    /// confused with a later process that reused the pid.
    /// - Throws: `.unsupported` on TCP and on other platforms.
    public func peerProcess() throws(SocketError) -> PeerProcess { try handle.peerProcess() }

    /// Shuts down one or both directions. After `.write` the peer reads the
    /// end of the stream, and this side can still read its answer (half-close).
    ///
    /// The corresponding C function is `shutdown`.
    public func shutdown(_ direction: ShutdownDirection) throws(SocketError) { try handle.shutdown(direction) }

    /// Linux: what is received from now on carries its sender's credentials,
    /// checked by the kernel (`SCM_CREDENTIALS`, in
    /// ``ReceivedMessage/credentials``): per message on datagram and
    /// seqpacket sockets, and on a stream with ``StreamSocket/receiveWithDescriptors(into:timeout:)``.
    /// The corresponding C call is `setsockopt(SO_PASSCRED)`.
    /// - Throws: `.unsupported` on TCP; `.system(.notSupported)` on other platforms.
    public func setReceivesCredentials(_ on: Bool) throws(SocketError) { try handle.setReceivesCredentials(on) }

    /// The timeout of every later read or receive that names none: it then
    /// fails with `.timedOut` (as with Go's read deadline, for both API
    /// levels; the blocking `SO_RCVTIMEO` is not used). `nil` waits forever.
    /// - Throws: `.invalidArgument` for a timeout that is not positive; `.closed`.
    public func setReadTimeout(_ timeout: Duration?) throws(SocketError) { try handle.setDefaultTimeout(timeout, .read) }

    /// The timeout of every later write or send that names none; see ``setReadTimeout(_:)``.
    public func setWriteTimeout(_ timeout: Duration?) throws(SocketError) { try handle.setDefaultTimeout(timeout, .write) }

    /// Whether plain reads keep descriptors that arrive with the data, for the
    /// next `receiveWithDescriptors`. Off by default: a plain read is a `recv`,
    /// and the kernel closes descriptors riding on the data it consumes, so a
    /// peer cannot fill this process's descriptor table unasked (as in Rust,
    /// Go, Python and SwiftNIO). On, at most 253 are kept (more are closed and
    /// reported once), and ``Socket/close()`` closes those never taken.
    public var keepsIncomingDescriptors: Bool {
        get { handle.keepsDescriptors.load(ordering: .relaxed) }
        set { handle.keepsDescriptors.store(newValue, ordering: .relaxed) }
    }
}

/// A byte stream over a Unix stream socket or TCP: ``StreamSocket`` and
/// ``AsyncStreamSocket``.
public protocol ByteStreamSocket: PeerSocket {}

extension ByteStreamSocket {
    /// Whether this is a TCP connection.
    public var isTCP: Bool { handle.kind == .tcp }

    /// Turns Nagle's algorithm off (`true`, the default for TCP) or on. Unix
    /// sockets have no such delay; for them this does nothing.
    ///
    /// The corresponding C call is `setsockopt(TCP_NODELAY)`.
    public func setNoDelay(_ on: Bool) throws(SocketError) {
        guard isTCP else { return }
        try handle.setNoDelay(on)
    }

    /// Whether `TCP_NODELAY` is on; always `true` for a Unix socket, which never delays.
    public func noDelay() throws(SocketError) -> Bool {
        guard isTCP else { return true }
        return try handle.noDelay()
    }
}

/// A socket watched by an event loop: the async types.
public protocol AsyncSocket: Socket {}

extension AsyncSocket {
    /// The loop that watches this socket: the executor its tasks should
    /// prefer, so that readiness wakes them without a thread hop.
    public var eventLoop: EventLoop { coreLoop }
}

// MARK: - Listeners

/// A listening socket, blocking or async, stream or seqpacket: it binds an
/// address safely and accepts connections.
///
/// Binding a Unix path replaces a stale socket file (one nobody listens on)
/// and says so in ``replacedStaleSocket``; it fails with `.addressInUse` when
/// a server is live there, and with `.notASocket` when the path is any other
/// kind of file. Both are left untouched. Closing removes the socket file, if
/// the path still names the socket this listener created. A TCP port is bound
/// with `SO_REUSEADDR`; `tcp:PORT` without a host binds the loopback address.
public class Listener: Socket, @unchecked Sendable {
    /// The endpoint this listener was bound to, as given (a TCP port 0 stays
    /// 0; see ``Socket/localEndpoint()``). Adopted listeners report what the kernel says.
    public let endpoint: Endpoint
    /// Whether binding removed a stale socket file first.
    public let replacedStaleSocket: Bool
    /// Which peers `accept` lets through; refused ones are closed at once.
    public let accessPolicy: AccessPolicy

    init(handle: SocketHandle, bound: ListeningBinding) {
        self.endpoint = bound.endpoint
        self.replacedStaleSocket = bound.replacedStaleSocket
        self.accessPolicy = bound.accessPolicy
        super.init(handle: handle)
    }

    init(core: AsyncCore, bound: ListeningBinding) {
        self.endpoint = bound.endpoint
        self.replacedStaleSocket = bound.replacedStaleSocket
        self.accessPolicy = bound.accessPolicy
        super.init(core: core)
    }

    /// The Unix address this listener was bound to, as given; `nil` for TCP.
    public var address: UnixAddress? { endpoint.unixAddress }

    /// Keeps the socket file when this listener closes: for handing the path
    /// over to another process. Does nothing for TCP and abstract names.
    public func keepSocketFileOnClose() { handle.releaseBoundFile() }
}

// MARK: - Messages

/// A blocking socket of whole messages: ``SeqpacketSocket`` and ``DatagramSocket``.
public protocol MessageSocket: PeerSocket {}

extension MessageSocket {
    /// Sends one message (to the connected address, for a datagram socket).
    /// The corresponding C function is `send`.
    /// - Returns: The message's length: a message is sent whole or not at all.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) throws(SocketError) -> Int {
        try handle.blocking(.write, "send", deadline: handle.deadline(timeout, .write)) { (fd, flags) in handle.writeAttempt(fd, buffer, flags: flags) }
    }

    /// Sends one message.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>, timeout: Duration? = nil) throws(SocketError) -> Int {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try send(buffer, timeout: timeout) }
    }

    /// Receives one message (and, on a datagram socket, its sender); check
    /// ``ReceivedMessage/isTruncated``. On a seqpacket socket a count of 0,
    /// not truncated, is the end of the connection.
    /// The corresponding C function is `recvmsg`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) throws(SocketError) -> ReceivedMessage {
        let wantSender = handle.kind == .datagram
        return try handle.blocking(.read, "recvmsg", deadline: handle.deadline(timeout, .read)) { (fd, flags) throws(SocketError) in
            try handle.messageAttempt(fd, buffer, wantSender: wantSender, flags: flags)
        }
    }

    /// Receives one message of at most `maximumSize` bytes; empty at the end.
    public func receive(
        maximumSize: Int = 65536, timeout: Duration? = nil
    ) throws(SocketError) -> (bytes: [UInt8], receipt: ReceivedMessage) {
        var receipt = ReceivedMessage(count: 0, isTruncated: false)
        let bytes = try [UInt8](unsafeUninitializedCapacity: maximumSize) { (buffer, initialized) throws(SocketError) in
            receipt = try receive(into: UnsafeMutableRawBufferPointer(buffer), timeout: timeout)
            initialized = receipt.count
        }
        return (bytes, receipt)
    }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`). They stay
    /// open here; the peer gets its own copies.
    /// - Throws: `.invalidArgument` for an empty seqpacket message,
    ///   `.tooManyDescriptors` past 253.
    @discardableResult
    public func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) throws(SocketError) -> Int {
        let numbers = try handle.validate(descriptors, with: buffer, needsData: handle.kind != .datagram)
        return try handle.blocking(.write, "sendmsg", deadline: handle.deadline(timeout, .write)) { (fd, flags) in
            handle.sendWithDescriptorsAttempt(fd, buffer, numbers, to: nil, flags: flags)
        }
    }

    /// Sends one message with `descriptors` attached.
    @discardableResult
    public func send(
        _ bytes: some Sequence<UInt8>, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) throws(SocketError) -> Int {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in
            try send(buffer, descriptors: descriptors, timeout: timeout)
        }
    }

    /// Receives one message with its descriptors (after any that plain
    /// receives kept).
    /// - Throws: `.descriptorsTruncated` if the sender attached more than 253.
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil
    ) throws(SocketError) -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try handle.receiveWithDescriptors(into: buffer, wantSender: handle.kind == .datagram, deadline: handle.deadline(timeout, .read))
    }
}

/// An async socket of whole messages: ``AsyncSeqpacketSocket`` and
/// ``AsyncDatagramSocket``. Sends wait while the receiver's queue is full;
/// nothing is dropped.
public protocol AsyncMessageSocket: PeerSocket, AsyncSocket {}

extension AsyncMessageSocket {
    /// Sends one message (to the connected address, for a datagram socket),
    /// waiting while the peer's queue is full.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) async throws -> Int {
        try await asyncCore.perform(.write, "send", deadline: handle.deadline(timeout, .write)) { handle.writeAttempt($0, buffer) }
    }

    /// Sends one message.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>, timeout: Duration? = nil) async throws -> Int {
        let bytes = Array(bytes)
        return try await asyncCore.perform(.write, "send", deadline: handle.deadline(timeout, .write)) { fd in
            bytes.withUnsafeBytes { handle.writeAttempt(fd, $0) }
        }
    }

    /// Receives one message (and, on a datagram socket, its sender); on a
    /// seqpacket socket a count of 0, not truncated, is the end of the connection.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) async throws -> ReceivedMessage {
        let wantSender = handle.kind == .datagram
        return try await asyncCore.perform(.read, "recvmsg", deadline: handle.deadline(timeout, .read)) { (fd) throws(SocketError) in
            try handle.messageAttempt(fd, buffer, wantSender: wantSender)
        }
    }

    /// Receives one message of at most `maximumSize` bytes; empty at the end.
    public func receive(
        maximumSize: Int = 65536, timeout: Duration? = nil
    ) async throws -> (bytes: [UInt8], receipt: ReceivedMessage) {
        try await asyncCore.receiveMessage(maximumSize: maximumSize, deadline: handle.deadline(timeout, .read))
    }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`).
    @discardableResult
    public func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) async throws -> Int {
        try await asyncCore.send(
            buffer, descriptors: descriptors, to: nil, needsData: handle.kind != .datagram, deadline: handle.deadline(timeout, .write))
    }

    /// Sends one message with `descriptors` attached.
    @discardableResult
    public func send(
        _ bytes: some Sequence<UInt8>, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) async throws -> Int {
        try await withStableBytes(bytes) { buffer in try await send(buffer, descriptors: descriptors, timeout: timeout) }
    }

    /// Receives one message with its descriptors (after any that plain receives kept).
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil
    ) async throws -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try await asyncCore.receiveWithDescriptors(
            into: buffer, wantSender: handle.kind == .datagram, deadline: handle.deadline(timeout, .read))
    }

    /// The messages as they arrive, each at most `maximumSize` bytes; the
    /// sequence ends when the socket closes, or at the end of a seqpacket connection.
    public func messages(maximumSize: Int = 65536) -> Messages {
        Messages(core: asyncCore, maximumSize: maximumSize)
    }
}
