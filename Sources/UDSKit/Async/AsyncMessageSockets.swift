import Logging
import SystemPackage

/// A datagram socket for async code: whole messages, boundaries kept (see
/// ``AsyncMessageSocket``); the members of ``DatagramSocket``, async.
public final class AsyncDatagramSocket: Socket, AsyncMessageSocket, @unchecked Sendable {
    /// Whether binding replaced a stale socket file.
    public let replacedStaleSocket: Bool

    init(core: AsyncCore, replacedStaleSocket: Bool = false) {
        self.replacedStaleSocket = replacedStaleSocket
        super.init(core: core)
    }

    /// Takes over a blocking datagram socket (bound, connected or neither).
    public convenience init(_ socket: DatagramSocket, on loop: EventLoop = .shared) throws(SocketError) {
        self.init(core: try AsyncCore(adopting: socket.handle, loop: loop), replacedStaleSocket: socket.replacedStaleSocket)
    }

    /// A socket bound to `address`, with the safe-bind rules of ``Listener``.
    public static func bind(
        to address: some EndpointConvertible, options: BindOptions = BindOptions(), on loop: EventLoop = .shared
    ) throws(SocketError) -> AsyncDatagramSocket {
        let (handle, replaced) = try SocketHandle.openDatagram(bindingTo: address.makeEndpoint(), options: options, nonBlocking: true)
        return AsyncDatagramSocket(core: try AsyncCore.registering(handle, on: loop), replacedStaleSocket: replaced)
    }

    /// An unbound socket: it can send, but nobody can answer it.
    public static func unbound(on loop: EventLoop = .shared) throws(SocketError) -> AsyncDatagramSocket {
        let (handle, _) = try SocketHandle.openDatagram(bindingTo: nil, options: BindOptions(), nonBlocking: true)
        return AsyncDatagramSocket(core: try AsyncCore.registering(handle, on: loop))
    }

    /// Two connected datagram sockets.
    public static func makePair(on loop: EventLoop = .shared) throws(SocketError) -> (AsyncDatagramSocket, AsyncDatagramSocket) {
        let (first, second) = try DatagramSocket.makePair()
        return (try AsyncDatagramSocket(first, on: loop), try AsyncDatagramSocket(second, on: loop))
    }

    /// Takes over a datagram socket, bound or not, checked with the kernel first.
    public convenience init(adopting descriptor: FileDescriptor, on loop: EventLoop = .shared) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .datagram, listening: false), nonBlocking: true)
        self.init(core: try AsyncCore.registering(handle, on: loop))
    }

    /// Sets the default destination, and receives only from it.
    public func connect(to address: UnixAddress) throws(SocketError) {
        try handle.connect(to: address)
    }

    /// Sends one message to `address`, waiting while the receiver's queue is full.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, to address: UnixAddress, timeout: Duration? = nil) async throws -> Int {
        try await asyncCore.perform(.write, "sendto", deadline: handle.deadline(timeout, .write), naming: address.description) { handle.sendAttempt($0, buffer, to: address) }
    }

    /// Sends one message to `address`.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>, to address: UnixAddress, timeout: Duration? = nil) async throws -> Int {
        let bytes = Array(bytes)
        return try await asyncCore.perform(.write, "sendto", deadline: handle.deadline(timeout, .write), naming: address.description) { fd in
            bytes.withUnsafeBytes { handle.sendAttempt(fd, $0, to: address) }
        }
    }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`), to `address`.
    @discardableResult
    public func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [FileDescriptor], to address: UnixAddress, timeout: Duration? = nil
    ) async throws -> Int {
        try await asyncCore.send(buffer, descriptors: descriptors, to: address, needsData: false, deadline: handle.deadline(timeout, .write))
    }
}

/// A listening seqpacket socket for async code (Linux): the members of
/// ``SeqpacketListener``, async.
public final class AsyncSeqpacketListener: Listener, AsyncSocket, @unchecked Sendable {
    /// Where accepted connections are registered.
    let connectionLoops: any EventLoopSource

    init(core: AsyncCore, bound: ListeningBinding, connectionLoops: any EventLoopSource) {
        self.connectionLoops = connectionLoops
        super.init(core: core, bound: bound)
    }

    /// Binds and listens, with the safe-bind rules of ``Listener``.
    /// - Parameters:
    ///   - address: A path or an abstract name.
    ///   - options: Mode, owner and group of the socket file, stale-file policy, backlog.
    ///   - accessPolicy: Which peers ``accept(timeout:)`` lets through.
    ///   - loops: A loop, or a group whose loops take the accepted
    ///     connections in turn (the listener itself watches on the first).
    public static func bind(
        to address: some EndpointConvertible, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone, on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) -> AsyncSeqpacketListener {
        let (handle, bound) = try SocketHandle.listen(
            on: address.makeEndpoint(), kind: .seqpacket, options: options, admitting: accessPolicy, nonBlocking: true)
        return AsyncSeqpacketListener(
            core: try AsyncCore.registering(handle, on: loops.next()), bound: bound, connectionLoops: loops)
    }

    /// Takes over a listening seqpacket socket; see ``SeqpacketListener/init(adopting:admitting:logger:)``.
    /// `logger` is told of refusals and accept back-off (an adopted listener has no ``BindOptions``).
    public convenience init(
        adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone, logger: Logger? = nil,
        on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .seqpacket, listening: true), nonBlocking: true)
        self.init(
            core: try AsyncCore.registering(handle, on: loops.next()), bound: try handle.adoptedBinding(admitting: accessPolicy, logger: logger),
            connectionLoops: loops)
    }

    /// Waits for the next connection the access policy admits. Running out
    /// of descriptors or memory does not end it; see ``BindOptions/onAcceptRecovery``.
    public func accept(timeout: Duration? = nil) async throws -> (connection: AsyncSeqpacketSocket, peer: UnixAddress) {
        let (handle, peer) = try await asyncCore.accept(policy: accessPolicy, deadline: .after(timeout))
        return (AsyncSeqpacketSocket(core: try AsyncCore.registering(handle, on: connectionLoops.next())), peer.unixAddress ?? .unnamed)
    }

    /// The connections, as they arrive; the sequence ends when the listener closes.
    public var connections: AsyncIncomingConnections<AsyncSeqpacketSocket, UnixAddress> {
        AsyncIncomingConnections { try await self.accept() }
    }
}

/// A connected seqpacket socket for async code (Linux): one message per send
/// and per receive (see ``AsyncMessageSocket``).
public final class AsyncSeqpacketSocket: Socket, AsyncMessageSocket, @unchecked Sendable {
    override init(core: AsyncCore) {
        super.init(core: core)
    }

    /// Takes over a connected blocking seqpacket socket.
    public convenience init(_ socket: SeqpacketSocket, on loop: EventLoop = .shared) throws(SocketError) {
        self.init(core: try AsyncCore(adopting: socket.handle, loop: loop))
    }

    /// Connects to a seqpacket listener, optionally binding `localAddress` first.
    public static func connect(
        to address: some EndpointConvertible, from localAddress: UnixAddress? = nil,
        bindOptions: BindOptions = BindOptions(), timeout: Duration? = nil, on loop: EventLoop = .shared
    ) async throws -> AsyncSeqpacketSocket {
        AsyncSeqpacketSocket(core: try await AsyncCore.connect(
            to: address.makeEndpoint(), kind: .seqpacket, from: localAddress, bindOptions: bindOptions,
            deadline: .after(timeout), on: loop))
    }

    /// Two connected seqpacket sockets.
    public static func makePair(on loop: EventLoop = .shared) throws(SocketError) -> (AsyncSeqpacketSocket, AsyncSeqpacketSocket) {
        let (first, second) = try SeqpacketSocket.makePair()
        return (try AsyncSeqpacketSocket(first, on: loop), try AsyncSeqpacketSocket(second, on: loop))
    }

    /// Takes over a connected seqpacket socket, checked with the kernel first.
    public convenience init(adopting descriptor: FileDescriptor, on loop: EventLoop = .shared) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .seqpacket, listening: false), nonBlocking: true)
        self.init(core: try AsyncCore.registering(handle, on: loop))
    }
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

    /// Receives one message per call.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let core: AsyncCore
        let maximumSize: Int

        /// The next message, or `nil` at the end (closed socket or connection).
        public mutating func next() async throws -> Element? {
            let message: Element
            do {
                message = try await core.receiveMessage(maximumSize: maximumSize, deadline: nil)
            } catch let error as SocketError where error.code == .closed {
                return nil
            }
            // A connection's end: an empty, untruncated message on a seqpacket socket.
            let receipt = message.receipt
            if receipt.count == 0 && !receipt.isTruncated && core.handle.kind != .datagram { return nil }
            return message
        }
    }

    /// An iterator that receives from the socket.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(core: core, maximumSize: maximumSize)
    }
}
