import SystemPackage

/// A `SOCK_DGRAM` Unix socket: whole messages, with boundaries kept (see
/// ``MessageSocket`` for sending and receiving).
///
/// Unlike UDP, Unix datagrams are reliable and ordered: a send blocks while the
/// receiver's queue is full instead of dropping. A message longer than the
/// receive buffer is reported as truncated (``ReceivedMessage/isTruncated``),
/// never silently cut.
///
/// To get replies, a client binds an address of its own (a path with its pid,
/// or an abstract name); an unbound sender cannot be answered.
public final class DatagramSocket: Socket, MessageSocket, @unchecked Sendable {
    /// Whether binding replaced a stale socket file.
    public let replacedStaleSocket: Bool

    init(handle: SocketHandle, replacedStaleSocket: Bool = false) {
        self.replacedStaleSocket = replacedStaleSocket
        super.init(handle: handle)
    }

    /// An unbound socket: it can send, but nobody can answer it.
    public static func unbound() throws(SocketError) -> DatagramSocket {
        DatagramSocket(handle: try SocketHandle.openDatagram(bindingTo: nil, options: BindOptions(), nonBlocking: false).0)
    }

    /// A socket bound to `address`, with the safe-bind rules of ``Listener``;
    /// the file is removed on close.
    public static func bind(to address: some EndpointConvertible, options: BindOptions = BindOptions()) throws(SocketError) -> DatagramSocket {
        let (handle, replaced) = try SocketHandle.openDatagram(bindingTo: address.makeEndpoint(), options: options, nonBlocking: false)
        return DatagramSocket(handle: handle, replacedStaleSocket: replaced)
    }

    /// Two connected datagram sockets. The corresponding C function is `socketpair`.
    public static func makePair() throws(SocketError) -> (DatagramSocket, DatagramSocket) {
        let (first, second) = try SocketHandle.openPair(.datagram)
        return (DatagramSocket(handle: first), DatagramSocket(handle: second))
    }

    /// Takes over a datagram socket, bound or not, checked with the kernel first.
    public init(adopting descriptor: FileDescriptor) throws(SocketError) {
        self.replacedStaleSocket = false
        super.init(handle: try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .datagram, listening: false)))
    }

    /// Sets the default destination, and receives only from it.
    /// The corresponding C function is `connect`.
    public func connect(to address: UnixAddress) throws(SocketError) {
        try handle.connect(to: address)
    }

    /// Sends one message to `address`. The corresponding C function is `sendto`.
    /// - Returns: The message's length: a datagram is sent whole or not at all.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, to address: UnixAddress, timeout: Duration? = nil) throws(SocketError) -> Int {
        try handle.blocking(.write, "sendto", deadline: handle.deadline(timeout, .write), naming: address.description) { (fd, flags) in
            handle.sendAttempt(fd, buffer, to: address, flags: flags)
        }
    }

    /// Sends one message to `address`.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>, to address: UnixAddress, timeout: Duration? = nil) throws(SocketError) -> Int {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try send(buffer, to: address, timeout: timeout) }
    }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`), to `address`.
    @discardableResult
    public func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [FileDescriptor], to address: UnixAddress, timeout: Duration? = nil
    ) throws(SocketError) -> Int {
        let numbers = try handle.validate(descriptors, with: buffer, needsData: false)
        return try handle.blocking(.write, "sendmsg", deadline: handle.deadline(timeout, .write), naming: address.description) {
            (fd, flags) in handle.sendWithDescriptorsAttempt(fd, buffer, numbers, to: address, flags: flags)
        }
    }
}

extension ReceivedMessage {
    init(count: Int, isTruncated: Bool) {
        self.init(count: count, isTruncated: isTruncated, fullLength: nil, sender: nil, credentials: nil)
    }
}

extension SocketHandle {
    /// A datagram socket, bound to `endpoint` if one is given (a Unix
    /// address: datagrams have no TCP form here); returns whether a stale
    /// socket file was replaced.
    static func openDatagram(
        bindingTo endpoint: Endpoint?, options: BindOptions, nonBlocking: Bool
    ) throws(SocketError) -> (SocketHandle, Bool) {
        guard let endpoint else {
            return (try open(.datagram, operation: "socket", label: nil, nonBlocking: nonBlocking), false)
        }
        guard let address = endpoint.unixAddress else {
            throw SocketError("bind", address: endpoint.description, code: .unsupported("TCP for datagram sockets is"))
        }
        let handle = try open(.datagram, operation: "bind", label: address.description, nonBlocking: nonBlocking)
        do throws(SocketError) {
            return (handle, try handle.bind(to: address, options: options))
        } catch {
            try? handle.close()
            throw error
        }
    }
}
