import Logging
import SystemPackage

/// A listening stream socket for async code, on a Unix address or a TCP
/// port: the safe bind of ``Listener``, with `accept` that suspends instead
/// of blocking. The same members as ``StreamListener``.
///
///     let listener = try AsyncStreamListener.bind(to: UnixAddress("./uds_socket"))
///     for try await (connection, peer) in listener.connections { ... }
public final class AsyncStreamListener: Listener, AsyncSocket, @unchecked Sendable {
    /// Where accepted connections are registered.
    let connectionLoops: any EventLoopSource

    init(core: AsyncCore, bound: ListeningBinding, connectionLoops: any EventLoopSource) {
        self.connectionLoops = connectionLoops
        super.init(core: core, bound: bound)
    }

    /// Binds and listens, with the rules of ``StreamListener/bind(to:options:admitting:)``.
    /// - Parameters:
    ///   - endpoint: A Unix path or abstract name, or a TCP host and port.
    ///   - options: Mode, owner and group of the socket file, stale-file policy, backlog.
    ///   - accessPolicy: Which peers ``accept(timeout:)`` lets through (Unix only).
    ///   - loops: The loop that watches this listener and its
    ///     connections, or a group whose loops take the accepted connections in
    ///     turn (the listener itself watches on the first).
    public static func bind(
        to endpoint: some EndpointConvertible, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone, on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) -> AsyncStreamListener {
        let (handle, bound) = try SocketHandle.listen(
            on: endpoint.makeEndpoint(), kind: .stream, options: options, admitting: accessPolicy, nonBlocking: true)
        return AsyncStreamListener(core: try AsyncCore.registering(handle, on: loops.next()), bound: bound, connectionLoops: loops)
    }

    /// Takes over a listening stream socket, Unix or TCP; see ``StreamListener/init(adopting:admitting:logger:)``.
    /// `logger` is told of refusals and accept back-off (an adopted listener has no ``BindOptions``).
    public convenience init(
        adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone, logger: Logger? = nil,
        on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: true), nonBlocking: true)
        self.init(
            core: try AsyncCore.registering(handle, on: loops.next()), bound: try handle.adoptedBinding(admitting: accessPolicy, logger: logger),
            connectionLoops: loops)
    }

    /// Waits for the next connection the access policy admits. Running out
    /// of descriptors or memory does not end it: the listener sheds or pauses
    /// and goes on (see ``BindOptions/onAcceptRecovery``).
    /// - Returns: The connection (TCP: with `TCP_NODELAY` on), registered
    ///   with the next of the listener's loops, and the peer's endpoint.
    /// - Throws: ``SocketError`` (`.closed` once the listener is closed, `.timedOut`),
    ///   or `CancellationError`.
    public func accept(timeout: Duration? = nil) async throws -> (connection: AsyncStreamSocket, peer: Endpoint) {
        let (handle, peer) = try await asyncCore.accept(policy: accessPolicy, deadline: .after(timeout))
        return (AsyncStreamSocket(core: try AsyncCore.registering(handle, on: connectionLoops.next())), peer)
    }

    /// The connections, as they arrive; the sequence ends when the listener closes.
    public var connections: AsyncIncomingConnections<AsyncStreamSocket, Endpoint> {
        AsyncIncomingConnections { try await self.accept() }
    }
}

/// Connections as an async listener accepts them: an `AsyncSequence` that
/// ends when the listener is closed.
public struct AsyncIncomingConnections<Connection: PeerSocket, Peer: Sendable>: AsyncSequence, Sendable {
    /// An accepted connection and its peer.
    public typealias Element = (connection: Connection, peer: Peer)
    let accept: @Sendable () async throws -> Element

    /// Accepts one connection per call.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let accept: @Sendable () async throws -> Element

        /// The next connection, or `nil` once the listener is closed.
        public mutating func next() async throws -> Element? {
            do {
                return try await accept()
            } catch let error as SocketError where error.code == .closed {
                return nil
            }
        }
    }

    /// An iterator that accepts from the listener.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(accept: accept) }
}

/// A connected byte stream for async code, over a Unix stream socket or TCP:
/// the members of ``StreamSocket``, async.
///
/// Operations suspend while the kernel would block: a writer waits while the
/// peer is not reading, so nothing is buffered without bound. Each takes an
/// optional `timeout`, after which it throws `.timedOut`; cancelling the task
/// throws `CancellationError` promptly. After a timeout or cancellation the
/// bytes already transferred stay transferred: a cancelled `writeAll`
/// may have sent a prefix, so the stream should then be closed.
///
/// Two levels, like tokio: `read`/`writeAll` do the waiting, while
/// ``readable(timeout:)`` plus ``tryRead(into:)`` let a server hold no buffer
/// for a connection that is idle.
public final class AsyncStreamSocket: Socket, ByteStreamSocket, AsyncSocket, @unchecked Sendable {
    override init(core: AsyncCore) {
        super.init(core: core)
    }

    /// Connects to a listening socket: a Unix path or abstract name
    /// (optionally binding `localAddress` first), or TCP; see
    /// ``StreamSocket/connect(to:from:bindOptions:timeout:)``.
    public static func connect(
        to endpoint: some EndpointConvertible, from localAddress: UnixAddress? = nil,
        bindOptions: BindOptions = BindOptions(), timeout: Duration? = nil, on loop: EventLoop = .shared
    ) async throws -> AsyncStreamSocket {
        AsyncStreamSocket(core: try await AsyncCore.connect(
            to: endpoint.makeEndpoint(), kind: .stream, from: localAddress, bindOptions: bindOptions,
            deadline: .after(timeout), on: loop))
    }

    /// Takes over a connected blocking socket, Unix or TCP.
    public convenience init(_ socket: StreamSocket, on loop: EventLoop = .shared) throws(SocketError) {
        self.init(core: try AsyncCore(adopting: socket.handle, loop: loop))
    }

    /// Two connected sockets, unnamed.
    public static func makePair(on loop: EventLoop = .shared) throws(SocketError) -> (AsyncStreamSocket, AsyncStreamSocket) {
        let (first, second) = try StreamSocket.makePair()
        return (try AsyncStreamSocket(first, on: loop), try AsyncStreamSocket(second, on: loop))
    }

    /// Takes over a connected stream socket, Unix or TCP, checked with the kernel first.
    public convenience init(adopting descriptor: FileDescriptor, on loop: EventLoop = .shared) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: false), nonBlocking: true)
        self.init(core: try AsyncCore.registering(handle, on: loop))
    }

    // MARK: Reading

    /// Reads what has arrived, waiting for something if nothing has; 0 at the end of the stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) async throws -> Int {
        try await asyncCore.perform(.read, "read", deadline: handle.deadline(timeout, .read), exhausted: { AsyncCore.drains($0, of: buffer.count) }) {
            (fd) throws(SocketError) in try handle.readAttempt(fd, buffer)
        }
    }

    /// Reads up to `maximumCount` bytes; empty at the end of the stream.
    public func read(upTo maximumCount: Int, timeout: Duration? = nil) async throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: maximumCount)
        let count = try await asyncCore.perform(
            .read, "read", deadline: handle.deadline(timeout, .read), exhausted: { AsyncCore.drains($0, of: maximumCount) }
        ) { (fd) throws(SocketError) in
            try bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(SocketError) in try handle.readAttempt(fd, buffer) }
            }.get()
        }
        bytes.removeSubrange(count...)
        return bytes
    }

    /// Reads exactly `buffer.count` bytes; `timeout` bounds the whole read.
    /// - Throws: `.unexpectedEndOfStream` if the peer closes first.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) async throws {
        let deadline = handle.deadline(timeout, .read)
        var filled = 0
        while filled < buffer.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
            let count = try await asyncCore.perform(.read, "read", deadline: deadline, exhausted: { AsyncCore.drains($0, of: rest.count) }) {
                (fd) throws(SocketError) in try handle.readAttempt(fd, rest)
            }
            if count == 0 {
                throw handle.error("read", code: .unexpectedEndOfStream(received: filled, expected: buffer.count))
            }
            filled += count
        }
    }

    /// Reads exactly `count` bytes.
    /// - Throws: `.unexpectedEndOfStream` if the peer closes first.
    public func readExactly(_ count: Int, timeout: Duration? = nil) async throws -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
        defer { buffer.deallocate() }
        try await readExactly(into: buffer, timeout: timeout)
        return Array(buffer)
    }

    /// Reads without waiting: `nil` if nothing has arrived, 0 at the end of the stream.
    public func tryRead(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int? {
        try withAsyncCore { (core) throws(SocketError) in
            try core.attempt(.read, "read", exhausted: { AsyncCore.drains($0, of: buffer.count) }) { (fd) throws(SocketError) in
                try handle.readAttempt(fd, buffer)
            }
        }
    }

    /// Waits until a read may succeed (or the stream ended). May be a false positive.
    public func readable(timeout: Duration? = nil) async throws {
        try await AsyncCore.ready(unmanagedCore, .read, deadline: handle.deadline(timeout, .read), operation: "read")
    }

    // MARK: Writing

    /// Writes some of `buffer` and returns how much, waiting until something can be written.
    public func write(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) async throws -> Int {
        try await asyncCore.perform(.write, "write", deadline: handle.deadline(timeout, .write), exhausted: { AsyncCore.fills($0, of: buffer.count) }) {
            handle.writeAttempt($0, buffer)
        }
    }

    /// Writes every byte, waiting while the peer is not reading; `timeout` bounds the whole write.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) async throws {
        try await asyncCore.writeAll(buffer, deadline: handle.deadline(timeout, .write))
    }

    /// Writes every byte.
    public func writeAll(_ bytes: some Sequence<UInt8>, timeout: Duration? = nil) async throws {
        let deadline = handle.deadline(timeout, .write)
        try await withStableBytes(bytes) { buffer in try await asyncCore.writeAll(buffer, deadline: deadline) }
    }

    /// Writes without waiting: how much was written, or `nil` if nothing could be.
    public func tryWrite(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int? {
        try withAsyncCore { (core) throws(SocketError) in
            try core.attempt(.write, "write", exhausted: { AsyncCore.fills($0, of: buffer.count) }) { handle.writeAttempt($0, buffer) }
        }
    }

    /// Waits until a write may succeed. May be a false positive.
    public func writable(timeout: Duration? = nil) async throws {
        try await AsyncCore.ready(unmanagedCore, .write, deadline: handle.deadline(timeout, .write), operation: "write")
    }

    // MARK: Descriptor passing

    /// Writes every byte of `buffer`, with `descriptors` riding on the first
    /// bytes (`SCM_RIGHTS`); see ``StreamSocket/writeAll(_:descriptors:timeout:)-(UnsafeRawBufferPointer,_,_)``.
    public func writeAll(
        _ buffer: UnsafeRawBufferPointer, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) async throws {
        let deadline = handle.deadline(timeout, .write)
        let first = try await asyncCore.send(buffer, descriptors: descriptors, to: nil, needsData: true, deadline: deadline)
        try await asyncCore.writeAll(UnsafeRawBufferPointer(rebasing: buffer[first...]), deadline: deadline)
    }

    /// Writes every byte, with `descriptors` riding on the first.
    public func writeAll(
        _ bytes: some Sequence<UInt8>, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) async throws {
        try await withStableBytes(bytes) { buffer in try await writeAll(buffer, descriptors: descriptors, timeout: timeout) }
    }

    /// Reads what has arrived with the descriptors that came with it, after
    /// any that plain reads kept; see ``StreamSocket/receiveWithDescriptors(into:timeout:)``.
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil
    ) async throws -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try await asyncCore.receiveWithDescriptors(into: buffer, wantSender: false, deadline: handle.deadline(timeout, .read))
    }
}
