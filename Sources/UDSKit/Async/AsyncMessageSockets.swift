/// A datagram socket for async code: whole messages, boundaries kept.
/// Sends wait while the receiver's queue is full; nothing is dropped.
public final class AsyncDatagramSocket: Sendable {
    let core: AsyncCore
    /// Whether binding replaced a stale socket file.
    public let replacedStaleSocket: Bool

    init(core: AsyncCore, replacedStaleSocket: Bool = false) {
        self.core = core
        self.replacedStaleSocket = replacedStaleSocket
    }

    /// Takes over a blocking datagram socket (bound, connected or neither).
    public convenience init(_ socket: DatagramSocket, on loop: EventLoop = .shared) throws(SocketError) {
        self.init(core: try AsyncCore(adopting: socket.handle, loop: loop), replacedStaleSocket: socket.replacedStaleSocket)
    }

    /// A socket bound to `address`, with the safe-bind rules of ``StreamListener``.
    public static func bind(
        to address: UnixAddress, options: BindOptions = BindOptions(), on loop: EventLoop = .shared
    ) throws(SocketError) -> AsyncDatagramSocket {
        try AsyncDatagramSocket(DatagramSocket.bind(to: address, options: options), on: loop)
    }

    /// An unbound socket: it can send, but nobody can answer it.
    public static func unbound(on loop: EventLoop = .shared) throws(SocketError) -> AsyncDatagramSocket {
        try AsyncDatagramSocket(DatagramSocket.unbound(), on: loop)
    }

    /// Sets the default destination, and receives only from it.
    public func connect(to address: UnixAddress) throws(SocketError) {
        try core.handle.connect(to: address)
    }

    /// Sends one message to `address`, waiting while the receiver's queue is full.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, to address: UnixAddress, timeout: Duration? = nil) async throws -> Int {
        try await core.perform(.write, "sendto", deadline: AsyncCore.deadline(after: timeout)) { fd in
            address.withSockaddr { Sys.send(fd, buffer, to: $0, $1) }
        }
    }

    /// Sends one message to the connected address.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) async throws -> Int {
        try await core.perform(.write, "send", deadline: AsyncCore.deadline(after: timeout)) { Sys.send($0, buffer) }
    }

    /// Sends one message, given as bytes, to `address` (or the connected address).
    @discardableResult
    public func send(_ bytes: [UInt8], to address: UnixAddress? = nil, timeout: Duration? = nil) async throws -> Int {
        let deadline = AsyncCore.deadline(after: timeout)
        return try await core.perform(.write, "sendto", deadline: deadline) { fd in
            bytes.withUnsafeBytes { buffer in
                guard let address else { return Sys.send(fd, buffer) }
                return address.withSockaddr { Sys.send(fd, buffer, to: $0, $1) }
            }
        }
    }

    /// Receives one message and its sender; check `isTruncated`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) async throws -> ReceivedMessage {
        try await core.perform(.read, "recvmsg", deadline: AsyncCore.deadline(after: timeout)) { (fd) throws(SocketError) in
            try core.receiveAttempt(fd, buffer, wantSender: true)
        }
    }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`), to
    /// `address` or, if `nil`, the connected address.
    @discardableResult
    public func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [CInt], to address: UnixAddress? = nil, timeout: Duration? = nil
    ) async throws -> Int {
        try await core.send(
            buffer, descriptors: descriptors, to: address, needsData: false, deadline: AsyncCore.deadline(after: timeout))
    }

    /// Receives one message, its sender and its descriptors (after any that plain receives kept).
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil
    ) async throws -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try await core.receiveWithDescriptors(into: buffer, wantSender: true, deadline: AsyncCore.deadline(after: timeout))
    }

    /// Linux: every message received from now on carries its sender's
    /// credentials (`SO_PASSCRED`); see ``DatagramSocket/setReceivesCredentials(_:)``.
    public func setReceivesCredentials(_ on: Bool) throws(SocketError) {
        try core.handle.setReceivesCredentials(on)
    }

    /// Whether plain receives keep descriptors that arrive with messages; see
    /// ``StreamSocket/keepsIncomingDescriptors``.
    public var keepsIncomingDescriptors: Bool {
        get { core.handle.keepsDescriptors.load(ordering: .relaxed) }
        set { core.handle.keepsDescriptors.store(newValue, ordering: .relaxed) }
    }

    /// The messages as they arrive, each at most `maximumSize` bytes; the
    /// sequence ends when the socket is closed.
    public func messages(maximumSize: Int = 65536) -> Messages {
        Messages(core: core, maximumSize: maximumSize, wantSender: true)
    }

    /// This socket's address.
    public func localAddress() throws(SocketError) -> UnixAddress { try core.handle.localAddress() }

    /// Closes once and removes the socket file it bound; waiting operations fail with `.closed`.
    public func close() throws(SocketError) { try core.close() }

    /// The loop that watches this socket, where its tasks run best.
    public var eventLoop: EventLoop { core.registration.loop }

    /// The descriptor, for use with other APIs; it stays owned by this socket.
    public var descriptor: CInt { core.handle.descriptor }
}

/// A listening seqpacket socket for async code (Linux).
public final class AsyncSeqpacketListener: Sendable {
    let core: AsyncCore
    /// Where accepted connections are registered.
    let connectionLoops: any EventLoopSource
    /// The address this listener was bound to, as given.
    public let address: UnixAddress
    /// Which peers ``accept(timeout:)`` lets through.
    public let accessPolicy: AccessPolicy
    /// Whether binding removed a stale socket file first.
    public let replacedStaleSocket: Bool

    private init(
        core: AsyncCore, connectionLoops: any EventLoopSource, address: UnixAddress, accessPolicy: AccessPolicy,
        replacedStaleSocket: Bool
    ) {
        self.core = core
        self.connectionLoops = connectionLoops
        self.address = address
        self.accessPolicy = accessPolicy
        self.replacedStaleSocket = replacedStaleSocket
    }

    /// Binds and listens, with the safe-bind rules of ``StreamListener``.
    /// - Parameters:
    ///   - address: A path or an abstract name.
    ///   - options: Mode, owner and group of the socket file, stale-file policy, backlog.
    ///   - accessPolicy: Which peers ``accept(timeout:)`` lets through.
    ///   - loops: A loop, or a group whose loops take the accepted
    ///     connections in turn (the listener itself watches on the first).
    public static func bind(
        to address: UnixAddress, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone, on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) -> AsyncSeqpacketListener {
        let handle = try SocketHandle.open(.seqpacket, operation: "bind", label: address.description, nonBlocking: true)
        let replaced = try handle.bindAndListen(to: address, options: options)
        return AsyncSeqpacketListener(
            core: try AsyncCore(handle: handle, loop: loops.next()), connectionLoops: loops, address: address,
            accessPolicy: accessPolicy, replacedStaleSocket: replaced)
    }

    /// A listener around a handle that already listens (adopted).
    convenience init(adopted handle: SocketHandle, admitting accessPolicy: AccessPolicy, on loops: any EventLoopSource) throws(SocketError) {
        self.init(
            core: try AsyncCore(handle: handle, loop: loops.next()), connectionLoops: loops,
            address: (try? handle.localAddress()) ?? .unnamed, accessPolicy: accessPolicy, replacedStaleSocket: false)
    }

    /// Waits for the next connection the access policy admits. Running out
    /// of descriptors or memory does not end it; see ``BindOptions/onAcceptRecovery``.
    public func accept(timeout: Duration? = nil) async throws -> (connection: AsyncSeqpacketSocket, peer: UnixAddress) {
        let (handle, peer) = try await core.accept(policy: accessPolicy, deadline: AsyncCore.deadline(after: timeout))
        return (AsyncSeqpacketSocket(core: try AsyncCore(handle: handle, loop: connectionLoops.next())), peer)
    }

    /// Stops listening and removes the socket file.
    public func close() throws(SocketError) { try core.close() }

    /// The loop that watches this socket, where its tasks run best.
    public var eventLoop: EventLoop { core.registration.loop }
}

/// A connected seqpacket socket for async code (Linux): one message per send
/// and per receive.
public final class AsyncSeqpacketSocket: Sendable {
    let core: AsyncCore

    init(core: AsyncCore) {
        self.core = core
    }

    /// Takes over a connected blocking seqpacket socket.
    public convenience init(_ socket: SeqpacketSocket, on loop: EventLoop = .shared) throws(SocketError) {
        self.init(core: try AsyncCore(adopting: socket.handle, loop: loop))
    }

    /// Connects to a seqpacket listener.
    public static func connect(
        to address: UnixAddress, timeout: Duration? = nil, on loop: EventLoop = .shared
    ) async throws -> AsyncSeqpacketSocket {
        let handle = try SocketHandle.open(.seqpacket, operation: "connect", label: address.description, nonBlocking: true)
        let core = try AsyncCore(handle: handle, loop: loop)
        try await core.connect(to: address, deadline: AsyncCore.deadline(after: timeout))
        return AsyncSeqpacketSocket(core: core)
    }

    /// Two connected seqpacket sockets.
    public static func makePair(on loop: EventLoop = .shared) throws(SocketError) -> (AsyncSeqpacketSocket, AsyncSeqpacketSocket) {
        let (first, second) = try SeqpacketSocket.makePair()
        return (try AsyncSeqpacketSocket(first, on: loop), try AsyncSeqpacketSocket(second, on: loop))
    }

    /// Sends one message, waiting while the peer's queue is full.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) async throws -> Int {
        try await core.perform(.write, "send", deadline: AsyncCore.deadline(after: timeout)) { Sys.send($0, buffer) }
    }

    /// Sends one message.
    @discardableResult
    public func send(_ bytes: [UInt8], timeout: Duration? = nil) async throws -> Int {
        try await core.perform(.write, "send", deadline: AsyncCore.deadline(after: timeout)) { fd in
            bytes.withUnsafeBytes { Sys.send(fd, $0) }
        }
    }

    /// Receives one message; a count of 0, not truncated, is the end of the connection.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) async throws -> ReceivedMessage {
        try await core.perform(.read, "recvmsg", deadline: AsyncCore.deadline(after: timeout)) { (fd) throws(SocketError) in
            try core.receiveAttempt(fd, buffer, wantSender: false)
        }
    }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`).
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, descriptors: [CInt], timeout: Duration? = nil) async throws -> Int {
        try await core.send(
            buffer, descriptors: descriptors, to: nil, needsData: true, deadline: AsyncCore.deadline(after: timeout))
    }

    /// Receives one message with its descriptors (after any that plain receives kept).
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil
    ) async throws -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try await core.receiveWithDescriptors(into: buffer, wantSender: false, deadline: AsyncCore.deadline(after: timeout))
    }

    /// Whether plain receives keep descriptors that arrive with messages; see
    /// ``StreamSocket/keepsIncomingDescriptors``.
    public var keepsIncomingDescriptors: Bool {
        get { core.handle.keepsDescriptors.load(ordering: .relaxed) }
        set { core.handle.keepsDescriptors.store(newValue, ordering: .relaxed) }
    }

    /// The messages as they arrive; the sequence ends at the end of the connection.
    public func messages(maximumSize: Int = 65536) -> Messages {
        Messages(core: core, maximumSize: maximumSize, wantSender: false)
    }

    /// Shuts down one or both directions.
    public func shutdown(_ direction: ShutdownDirection) throws(SocketError) { try core.handle.shutdown(direction) }

    /// The peer's process, user and group IDs.
    public func peerCredentials() throws(SocketError) -> PeerCredentials { try core.handle.peerCredentials() }

    /// The peer process by pidfd (Linux 6.5+ `SO_PEERPIDFD`): it cannot be
    /// confused with a later process that reused the pid. `.unsupported` elsewhere.
    public func peerProcess() throws(SocketError) -> PeerProcess { try core.handle.peerProcess() }

    /// The loop that watches this socket: the executor its tasks should prefer.
    public var eventLoop: EventLoop { core.registration.loop }

    /// Closes once; waiting operations fail with `.closed`.
    public func close() throws(SocketError) { try core.close() }
}

/// Messages from a datagram or seqpacket socket, as an `AsyncSequence`.
///
/// Each element is the message's bytes and its receipt (sender, truncation).
/// The sequence ends when the socket closes (datagram) or at the end of the
/// connection (seqpacket).
public struct Messages: AsyncSequence, Sendable {
    /// A message's bytes and its receipt.
    public typealias Element = (bytes: [UInt8], receipt: ReceivedMessage)
    let core: AsyncCore
    let maximumSize: Int
    let wantSender: Bool

    /// Receives one message per call.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let core: AsyncCore
        let maximumSize: Int
        let wantSender: Bool

        /// The next message, or `nil` at the end (closed socket or connection).
        public mutating func next() async throws -> Element? {
            var bytes = [UInt8](repeating: 0, count: maximumSize)
            let wantSender = self.wantSender
            let core = self.core
            let receipt: ReceivedMessage
            do {
                receipt = try await core.perform(.read, "recvmsg", deadline: nil) { (fd) throws(SocketError) in
                    try bytes.withUnsafeMutableBytes { buffer in
                        Result { () throws(SocketError) in try core.receiveAttempt(fd, buffer, wantSender: wantSender) }
                    }.get()
                }
            } catch let error as SocketError where error.code == .closed {
                return nil
            }
            // A connection's end: an empty, untruncated message with no sender.
            if receipt.count == 0 && !receipt.isTruncated && !wantSender { return nil }
            bytes.removeSubrange(receipt.count...)
            return (bytes, receipt)
        }
    }

    /// An iterator that receives from the socket.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(core: core, maximumSize: maximumSize, wantSender: wantSender)
    }
}
