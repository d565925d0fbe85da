/// A listening stream socket for async code: the safe bind of
/// ``StreamListener``, with `accept` that suspends instead of blocking.
///
///     let listener = try AsyncStreamListener.bind(to: UnixAddress("./uds_socket"))
///     for try await (connection, peer) in listener.connections { ... }
public final class AsyncStreamListener: Sendable {
    let core: AsyncCore
    /// Where accepted connections are registered.
    let connectionLoops: any EventLoopSource
    /// The address this listener was bound to, as given.
    public let address: UnixAddress
    /// Whether binding removed a stale socket file first.
    public let replacedStaleSocket: Bool
    /// Which peers ``accept(timeout:)`` lets through.
    public let accessPolicy: AccessPolicy

    private init(
        core: AsyncCore, connectionLoops: any EventLoopSource, address: UnixAddress, replacedStaleSocket: Bool,
        accessPolicy: AccessPolicy
    ) {
        self.core = core
        self.connectionLoops = connectionLoops
        self.address = address
        self.replacedStaleSocket = replacedStaleSocket
        self.accessPolicy = accessPolicy
    }

    /// Binds and listens, with the rules of ``StreamListener/bind(to:options:admitting:)``.
    /// - Parameters:
    ///   - address: A path or an abstract name.
    ///   - options: Mode, owner and group of the socket file, stale-file policy, backlog.
    ///   - accessPolicy: Which peers ``accept(timeout:)`` lets through.
    ///   - loops: The loop that watches this listener and its
    ///     connections, or a group whose loops take the accepted connections in
    ///     turn (the listener itself watches on the first).
    public static func bind(
        to address: UnixAddress, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone, on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) -> AsyncStreamListener {
        let handle = try SocketHandle.open(.stream, operation: "bind", label: address.description, nonBlocking: true)
        let replaced = try handle.bindAndListen(to: address, options: options)
        let core = try AsyncCore(handle: handle, loop: loops.next())
        return AsyncStreamListener(
            core: core, connectionLoops: loops, address: address, replacedStaleSocket: replaced,
            accessPolicy: accessPolicy)
    }

    /// A listener around a handle that already listens (adopted).
    convenience init(adopted handle: SocketHandle, admitting accessPolicy: AccessPolicy, on loops: any EventLoopSource) throws(SocketError) {
        self.init(
            core: try AsyncCore(handle: handle, loop: loops.next()), connectionLoops: loops,
            address: (try? handle.localAddress()) ?? .unnamed, replacedStaleSocket: false, accessPolicy: accessPolicy)
    }

    /// Waits for the next connection the access policy admits. Running out
    /// of descriptors or memory does not end it: the listener sheds or pauses
    /// and goes on (see ``BindOptions/onAcceptRecovery``).
    /// - Throws: ``SocketError`` (`.closed` once the listener is closed, `.timedOut`),
    ///   or `CancellationError`.
    public func accept(timeout: Duration? = nil) async throws -> (connection: AsyncStreamSocket, peer: UnixAddress) {
        let (handle, peer) = try await core.accept(policy: accessPolicy, deadline: AsyncCore.deadline(after: timeout))
        return (try AsyncStreamSocket(core: AsyncCore(handle: handle, loop: connectionLoops.next())), peer)
    }

    /// The connections, as they arrive; the sequence ends when the listener closes.
    public var connections: Connections { Connections(listener: self) }

    /// Incoming connections with their peers' addresses.
    public struct Connections: AsyncSequence, Sendable {
        /// A connection and its peer's address.
        public typealias Element = (connection: AsyncStreamSocket, peer: UnixAddress)
        let listener: AsyncStreamListener

        /// Accepts one connection per call.
        public struct AsyncIterator: AsyncIteratorProtocol {
            let listener: AsyncStreamListener

            /// The next connection, or `nil` once the listener is closed.
            public mutating func next() async throws -> Element? {
                do {
                    return try await listener.accept()
                } catch let error as SocketError where error.code == .closed {
                    return nil
                }
            }
        }

        /// An iterator that accepts from the listener.
        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(listener: listener) }
    }

    /// The address as the kernel reports it.
    public func localAddress() throws(SocketError) -> UnixAddress { try core.handle.localAddress() }

    /// Stops listening, ends ``connections``, and removes the socket file.
    public func close() throws(SocketError) { try core.close() }

    /// The loop that watches this socket, where its tasks run best.
    public var eventLoop: EventLoop { core.registration.loop }
}

/// A connected stream socket for async code.
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
public final class AsyncStreamSocket: Sendable {
    let core: AsyncCore

    init(core: AsyncCore) {
        self.core = core
    }

    /// Connects to a listening socket, optionally binding `localAddress` first.
    public static func connect(
        to address: UnixAddress, from localAddress: UnixAddress? = nil, bindOptions: BindOptions = BindOptions(),
        timeout: Duration? = nil, on loop: EventLoop = .shared
    ) async throws -> AsyncStreamSocket {
        let handle = try SocketHandle.open(.stream, operation: "connect", label: address.description, nonBlocking: true)
        if let localAddress { _ = try handle.bind(to: localAddress, options: bindOptions) }
        let core = try AsyncCore(handle: handle, loop: loop)
        try await core.connect(to: address, deadline: AsyncCore.deadline(after: timeout))
        return AsyncStreamSocket(core: core)
    }

    /// Takes over a connected blocking socket.
    public convenience init(_ socket: StreamSocket, on loop: EventLoop = .shared) throws(SocketError) {
        self.init(core: try AsyncCore(adopting: socket.handle, loop: loop))
    }

    /// Two connected sockets.
    public static func makePair(on loop: EventLoop = .shared) throws(SocketError) -> (AsyncStreamSocket, AsyncStreamSocket) {
        let (first, second) = try StreamSocket.makePair()
        return (try AsyncStreamSocket(first, on: loop), try AsyncStreamSocket(second, on: loop))
    }

    /// Reads what has arrived, waiting for something if nothing has; 0 at the end of the stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) async throws -> Int {
        try await core.perform(
            .read, "read", deadline: AsyncCore.deadline(after: timeout), exhausted: AsyncCore.drained(buffer.count)
        ) { (fd) throws(SocketError) in
            try core.readAttempt(fd, buffer)
        }
    }

    /// Reads up to `maximumCount` bytes; empty at the end of the stream.
    public func read(upTo maximumCount: Int, timeout: Duration? = nil) async throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: maximumCount)
        let count = try await core.perform(
            .read, "read", deadline: AsyncCore.deadline(after: timeout), exhausted: AsyncCore.drained(maximumCount)
        ) { (fd) throws(SocketError) in
            try bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(SocketError) in try core.readAttempt(fd, buffer) }
            }.get()
        }
        bytes.removeSubrange(count...)
        return bytes
    }

    /// Reads exactly `buffer.count` bytes.
    /// - Throws: `.unexpectedEndOfStream` if the peer closes first.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) async throws {
        let deadline = AsyncCore.deadline(after: timeout)
        var filled = 0
        while filled < buffer.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
            let count = try await core.perform(.read, "read", deadline: deadline, exhausted: AsyncCore.drained(rest.count)) {
                (fd) throws(SocketError) in
                try core.readAttempt(fd, rest)
            }
            if count == 0 {
                throw core.handle.error("read", code: .unexpectedEndOfStream(received: filled, expected: buffer.count))
            }
            filled += count
        }
    }

    /// Writes every byte, waiting while the peer is not reading.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) async throws {
        try await core.writeAll(buffer, deadline: AsyncCore.deadline(after: timeout))
    }

    /// Writes every byte.
    public func writeAll(_ bytes: [UInt8], timeout: Duration? = nil) async throws {
        let deadline = AsyncCore.deadline(after: timeout)
        var offset = 0
        while offset < bytes.count {
            let offered = bytes.count - offset
            offset += try await core.perform(.write, "write", deadline: deadline, exhausted: AsyncCore.filled(offered)) {
                fd in bytes.withUnsafeBytes { Sys.send(fd, UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            }
        }
    }

    /// Waits until a read may succeed (or the stream ended). May be a false positive.
    public func readable(timeout: Duration? = nil) async throws {
        try await core.ready(.read, deadline: AsyncCore.deadline(after: timeout), operation: "read")
    }

    /// Waits until a write may succeed. May be a false positive.
    public func writable(timeout: Duration? = nil) async throws {
        try await core.ready(.write, deadline: AsyncCore.deadline(after: timeout), operation: "write")
    }

    /// Reads without waiting: `nil` if nothing has arrived, 0 at the end of the stream.
    public func tryRead(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int? {
        try core.attempt(.read, "read", exhausted: AsyncCore.drained(buffer.count)) { (fd) throws(SocketError) in
            try core.readAttempt(fd, buffer)
        }
    }

    /// Writes without waiting: how much was written, or `nil` if nothing could be.
    public func tryWrite(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int? {
        try core.attempt(.write, "write", exhausted: AsyncCore.filled(buffer.count)) { Sys.send($0, buffer) }
    }

    /// Writes every byte of `buffer`, with `descriptors` riding on the first
    /// bytes (`SCM_RIGHTS`); see `StreamSocket.writeAll(_:descriptors:)`.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, descriptors: [CInt], timeout: Duration? = nil) async throws {
        let deadline = AsyncCore.deadline(after: timeout)
        let first = try await core.send(buffer, descriptors: descriptors, to: nil, needsData: true, deadline: deadline)
        try await core.writeAll(UnsafeRawBufferPointer(rebasing: buffer[first...]), deadline: deadline)
    }

    /// Reads what has arrived with the descriptors that came with it, after
    /// any that plain reads kept; see ``StreamSocket/receiveWithDescriptors(into:)``.
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil
    ) async throws -> (count: Int, descriptors: [ReceivedDescriptor]) {
        let (message, descriptors) = try await core.receiveWithDescriptors(
            into: buffer, wantSender: false, deadline: AsyncCore.deadline(after: timeout))
        return (message.count, descriptors)
    }

    /// Shuts down one or both directions; `.write` is the half-close.
    public func shutdown(_ direction: ShutdownDirection) throws(SocketError) {
        try core.handle.shutdown(direction)
    }

    /// The peer's process, user and group IDs.
    public func peerCredentials() throws(SocketError) -> PeerCredentials { try core.handle.peerCredentials() }

    /// The peer process by pidfd (Linux 6.5+ `SO_PEERPIDFD`): it cannot be
    /// confused with a later process that reused the pid. `.unsupported` elsewhere.
    public func peerProcess() throws(SocketError) -> PeerProcess { try core.handle.peerProcess() }

    /// This side's address.
    public func localAddress() throws(SocketError) -> UnixAddress { try core.handle.localAddress() }

    /// The peer's address.
    public func peerAddress() throws(SocketError) -> UnixAddress { try core.handle.peerAddress() }

    /// Whether plain reads keep descriptors that ride on the data; see
    /// ``StreamSocket/keepsIncomingDescriptors``.
    public var keepsIncomingDescriptors: Bool {
        get { core.handle.keepsDescriptors.load(ordering: .relaxed) }
        set { core.handle.keepsDescriptors.store(newValue, ordering: .relaxed) }
    }

    /// Closes once: waiting operations fail with `.closed`; later calls do nothing.
    public func close() throws(SocketError) { try core.close() }

    /// The descriptor, for use with other APIs; it stays owned by this socket.
    public var descriptor: CInt { core.handle.descriptor }

    /// The loop that watches this socket: the executor its tasks should
    /// prefer, so that readiness wakes them without a thread hop.
    public var eventLoop: EventLoop { core.registration.loop }
}
