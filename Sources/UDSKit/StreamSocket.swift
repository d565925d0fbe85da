import SystemPackage

/// A connected byte stream over a Unix stream socket or TCP: an ordered,
/// reliable byte stream, whichever the ``Endpoint`` names.
///
///     let socket = try StreamSocket.connect(to: Endpoint("tcp:127.0.0.1:8080"))  // or "./uds_socket"
///     try socket.writeAll(Array("ping\n".utf8))
///     try socket.shutdown(.write)          // the peer reads end-of-stream
///     let reply = try socket.read(upTo: 4096)
///
/// Reads return what has arrived (at most the buffer's size), and zero at the
/// end of the stream. ``writeAll(_:timeout:)-(UnsafeRawBufferPointer,_)`` sends every byte. Writing to a
/// peer that has closed fails with `EPIPE`; it never raises `SIGPIPE`. Every
/// operation that waits takes a `timeout`, after which it fails with
/// `.timedOut`; ``AsyncStreamSocket`` has the same members, async.
///
/// TCP connections have `TCP_NODELAY` on (see ``ByteStreamSocket/setNoDelay(_:)``).
/// What only a Unix socket has (credentials, descriptor passing) fails on TCP
/// with `.unsupported`.
public final class StreamSocket: Socket, ByteStreamSocket, @unchecked Sendable {
    override init(handle: SocketHandle) {
        super.init(handle: handle)
    }

    /// Connects to a listening socket: a Unix path or abstract name, or TCP
    /// (trying each of the host's addresses in turn).
    ///
    /// The corresponding C functions are `getaddrinfo` (TCP), `socket` and `connect`.
    /// - Parameters:
    ///   - endpoint: Where to connect.
    ///   - localAddress: A Unix address to bind first, so the server can tell
    ///     this client apart (a path containing the pid, say); the file is
    ///     removed on close.
    ///   - bindOptions: How to bind `localAddress`.
    ///   - timeout: How long to wait for the connection; `nil` waits as long as the kernel does.
    /// - Throws: ``SocketError`` naming `bind` or `connect` and the endpoint, e.g.
    ///   `connect(tcp:127.0.0.1:9): connection refused (nothing is listening there)`.
    public static func connect(
        to endpoint: some EndpointConvertible, from localAddress: UnixAddress? = nil,
        bindOptions: BindOptions = BindOptions(), timeout: Duration? = nil
    ) throws(SocketError) -> StreamSocket {
        switch try SocketHandle.forConnecting(
            to: endpoint.makeEndpoint(), kind: .stream, from: localAddress, bindOptions: bindOptions, nonBlocking: false)
        {
        case .unix(let handle, let address):
            do throws(SocketError) {
                try handle.connect(to: address, timeout: timeout)
            } catch {
                try? handle.close()
                throw error
            }
            return StreamSocket(handle: handle)
        case .tcp(let addresses, let label):
            var attempts = TCPConnectAttempts<SocketError>(label: label)
            for address in addresses {
                let handle = try attempts.open(for: address, nonBlocking: false)
                do throws(SocketError) {
                    _ = try handle.connect(timeout: timeout, interruption: .awaitCompletion) { fd in
                        address.withSockaddr { Sys.connect(fd, $0, $1) }
                    }
                    try attempts.connected(handle)
                    return StreamSocket(handle: handle)
                } catch {
                    attempts.failed(handle, error)
                }
            }
            throw attempts.noneAccepted()
        }
    }

    /// Two connected sockets, unnamed, for talking to a thread or a child process.
    ///
    /// The corresponding C function is `socketpair`.
    public static func makePair() throws(SocketError) -> (StreamSocket, StreamSocket) {
        let (first, second) = try SocketHandle.openPair(.stream)
        return (StreamSocket(handle: first), StreamSocket(handle: second))
    }

    /// Takes over a connected stream socket, Unix or TCP (inetd-style
    /// activation hands one over), checked with the kernel first.
    public init(adopting descriptor: FileDescriptor) throws(SocketError) {
        super.init(handle: try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: false)))
    }

    // MARK: Reading

    /// Reads what has arrived, up to `buffer.count` bytes, waiting for something if nothing has.
    ///
    /// The corresponding C function is `recv`.
    /// - Returns: The number of bytes read; 0 at the end of the stream.
    @inline(__always)
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) throws(SocketError) -> Int {
        try handle.blocking(.read, "read", deadline: handle.deadline(timeout, .read)) { (fd, flags) throws(SocketError) in
            try handle.readAttempt(fd, buffer, flags: flags)
        }
    }

    /// Reads what has arrived, up to `maximumCount` bytes; empty at the end of the stream.
    public func read(upTo maximumCount: Int, timeout: Duration? = nil) throws(SocketError) -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: maximumCount) { (buffer, initialized) throws(SocketError) in
            initialized = try read(into: UnsafeMutableRawBufferPointer(buffer), timeout: timeout)
        }
    }

    /// Reads exactly `buffer.count` bytes; `timeout` bounds the whole read.
    /// - Throws: `.unexpectedEndOfStream` if the peer closes first.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) throws(SocketError) {
        let deadline = handle.deadline(timeout, .read)
        var filled = 0
        while filled < buffer.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
            let count = try handle.blocking(.read, "read", deadline: deadline) { (fd, flags) throws(SocketError) in
                try handle.readAttempt(fd, rest, flags: flags)
            }
            if count == 0 {
                throw handle.error("read", code: .unexpectedEndOfStream(received: filled, expected: buffer.count))
            }
            filled += count
        }
    }

    /// Reads exactly `count` bytes.
    /// - Throws: `.unexpectedEndOfStream` if the peer closes first.
    public func readExactly(_ count: Int, timeout: Duration? = nil) throws(SocketError) -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: count) { (buffer, initialized) throws(SocketError) in
            try readExactly(into: UnsafeMutableRawBufferPointer(buffer), timeout: timeout)
            initialized = count
        }
    }

    /// Reads without waiting: `nil` if nothing has arrived, 0 at the end of the stream.
    public func tryRead(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int? {
        try handle.withDescriptor("read") { (fd) throws(SocketError) in
            switch try handle.readAttempt(fd, buffer, flags: Sys.dontWaitFlag) {
            case .success(let count): return count
            case .failure(.wouldBlock): return nil
            case .failure(let errno): throw handle.error("read", errno)
            }
        }
    }

    /// Waits until a read may succeed (or the stream ended).
    /// The corresponding C function is `poll`.
    public func readable(timeout: Duration? = nil) throws(SocketError) {
        try handle.withDescriptor("read") { (fd) throws(SocketError) in
            try handle.awaitReady(fd, .read, "read", deadline: handle.deadline(timeout, .read))
        }
    }

    // MARK: Writing

    /// Writes some of `buffer` and returns how much, waiting until something
    /// can be written; see ``writeAll(_:timeout:)-(UnsafeRawBufferPointer,_)``.
    ///
    /// The corresponding C function is `send` with `MSG_NOSIGNAL`.
    @inline(__always)
    public func write(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) throws(SocketError) -> Int {
        try handle.blocking(.write, "write", deadline: handle.deadline(timeout, .write)) { (fd, flags) in handle.writeAttempt(fd, buffer, flags: flags) }
    }

    /// Writes every byte of `buffer`, continuing after partial writes;
    /// `timeout` bounds the whole write. After a timeout, the bytes already
    /// sent stay sent.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, timeout: Duration? = nil) throws(SocketError) {
        let deadline = handle.deadline(timeout, .write)
        var remaining = buffer
        while !remaining.isEmpty {
            let written = try handle.blocking(.write, "write", deadline: deadline) { (fd, flags) in
                handle.writeAttempt(fd, remaining, flags: flags)
            }
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }

    /// Writes every byte.
    public func writeAll(_ bytes: some Sequence<UInt8>, timeout: Duration? = nil) throws(SocketError) {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try writeAll(buffer, timeout: timeout) }
    }

    /// Writes without waiting: how much was written, or `nil` if nothing could be.
    public func tryWrite(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int? {
        try handle.withDescriptor("write") { (fd) throws(SocketError) in
            switch handle.writeAttempt(fd, buffer, flags: Sys.dontWaitFlag) {
            case .success(let count): return count
            case .failure(.wouldBlock): return nil
            case .failure(let errno): throw handle.error("write", errno)
            }
        }
    }

    /// Waits until a write may succeed. The corresponding C function is `poll`.
    public func writable(timeout: Duration? = nil) throws(SocketError) {
        try handle.withDescriptor("write") { (fd) throws(SocketError) in
            try handle.awaitReady(fd, .write, "write", deadline: handle.deadline(timeout, .write))
        }
    }

    // MARK: Descriptor passing

    /// Writes every byte of `buffer`, with `descriptors` riding on the first
    /// bytes (`SCM_RIGHTS`). The descriptors stay open here; the peer gets
    /// its own copies.
    /// - Throws: `.invalidArgument` for an empty buffer (a stream needs a byte
    ///   to carry them), `.tooManyDescriptors` past 253, `.unsupported` on TCP.
    public func writeAll(
        _ buffer: UnsafeRawBufferPointer, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) throws(SocketError) {
        let deadline = handle.deadline(timeout, .write)
        let numbers = try handle.validate(descriptors, with: buffer, needsData: true)
        let first = try handle.blocking(.write, "sendmsg", deadline: deadline) { (fd, flags) in
            handle.sendWithDescriptorsAttempt(fd, buffer, numbers, to: nil, flags: flags)
        }
        try writeAll(UnsafeRawBufferPointer(rebasing: buffer[first...]), timeout: deadline.map { Deadline.now.duration(to: $0) })
    }

    /// Writes every byte, with `descriptors` riding on the first.
    public func writeAll(
        _ bytes: some Sequence<UInt8>, descriptors: [FileDescriptor], timeout: Duration? = nil
    ) throws(SocketError) {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in
            try writeAll(buffer, descriptors: descriptors, timeout: timeout)
        }
    }

    /// Reads what has arrived, with the descriptors that came with it and any
    /// that earlier plain reads kept. A read stops where descriptors are
    /// attached, so they come with the bytes they were sent with. With
    /// ``PeerSocket/setReceivesCredentials(_:)`` on, the message carries the
    /// sender's credentials too.
    /// - Throws: `.descriptorsTruncated` if the sender attached more than 253;
    ///   `.unsupported` on TCP.
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, timeout: Duration? = nil
    ) throws(SocketError) -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try handle.receiveWithDescriptors(into: buffer, wantSender: false, deadline: handle.deadline(timeout, .read))
    }
}
