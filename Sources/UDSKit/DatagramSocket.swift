/// A `SOCK_DGRAM` Unix socket: whole messages, with boundaries kept.
///
/// Unlike UDP, Unix datagrams are reliable and ordered: a send blocks while the
/// receiver's queue is full instead of dropping. A message longer than the
/// receive buffer is reported as truncated (``ReceivedMessage/isTruncated``),
/// never silently cut.
///
/// To get replies, a client binds an address of its own (a path with its pid,
/// or an abstract name); an unbound sender cannot be answered.
public final class DatagramSocket: Sendable {
    let handle: SocketHandle
    /// Whether binding replaced a stale socket file.
    public let replacedStaleSocket: Bool

    init(handle: SocketHandle, replacedStaleSocket: Bool = false) {
        self.handle = handle
        self.replacedStaleSocket = replacedStaleSocket
    }

    /// An unbound socket: it can send, but nobody can answer it.
    public static func unbound() throws(SocketError) -> DatagramSocket {
        DatagramSocket(handle: try SocketHandle.open(.datagram, operation: "socket", label: nil))
    }

    /// A socket bound to `address`, with the same safe-bind rules as
    /// ``StreamListener/bind(to:options:admitting:)``; the file is removed on close.
    public static func bind(to address: UnixAddress, options: BindOptions = BindOptions()) throws(SocketError) -> DatagramSocket {
        let handle = try SocketHandle.open(.datagram, operation: "bind", label: address.description)
        let replaced = try handle.bind(to: address, options: options)
        return DatagramSocket(handle: handle, replacedStaleSocket: replaced)
    }

    /// Two connected datagram sockets. The corresponding C function is `socketpair`.
    public static func makePair() throws(SocketError) -> (DatagramSocket, DatagramSocket) {
        let (first, second) = try SocketHandle.openPair(.datagram)
        return (DatagramSocket(handle: first), DatagramSocket(handle: second))
    }

    /// Sets the default destination, and receives only from it.
    /// The corresponding C function is `connect`.
    public func connect(to address: UnixAddress) throws(SocketError) {
        try handle.connect(to: address)
    }

    /// Sends one message to `address`. The corresponding C function is `sendto`.
    /// - Returns: The message's length: a datagram is sent whole or not at all.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, to address: UnixAddress) throws(SocketError) -> Int {
        try handle.send(buffer, to: address)
    }

    /// Sends one message to `address`.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>, to address: UnixAddress) throws(SocketError) -> Int {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try handle.send(buffer, to: address) }
    }

    /// Sends one message to the connected address. The corresponding C function is `send`.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        try handle.write(buffer)
    }

    /// Sends one message to the connected address.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>) throws(SocketError) -> Int {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try handle.write(buffer) }
    }

    /// Receives one message and its sender. The corresponding C function is `recvmsg`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> ReceivedMessage {
        try handle.receiveMessage(into: buffer, wantSender: true)
    }

    /// Receives one message of at most `maximumSize` bytes and its sender.
    /// - Returns: The bytes, and the receipt; check `isTruncated`.
    public func receive(maximumSize: Int = 65536) throws(SocketError) -> (bytes: [UInt8], receipt: ReceivedMessage) {
        try handle.receiveMessage(maximumSize: maximumSize, wantSender: true)
    }

    /// A receive that waits longer than `timeout` fails with `.timedOut`; `nil` waits forever.
    public func setReadTimeout(_ timeout: Duration?) throws(SocketError) {
        try handle.setTimeout(receive: true, timeout)
    }

    /// A send that waits longer than `timeout` fails with `.timedOut`; `nil` waits forever.
    public func setWriteTimeout(_ timeout: Duration?) throws(SocketError) {
        try handle.setTimeout(receive: false, timeout)
    }

    /// This socket's address. The corresponding C function is `getsockname`.
    public func localAddress() throws(SocketError) -> UnixAddress { try handle.localAddress() }

    /// The connected address. The corresponding C function is `getpeername`.
    public func peerAddress() throws(SocketError) -> UnixAddress { try handle.peerAddress() }

    /// Closes the socket once and removes the socket file it bound.
    public func close() throws(SocketError) { try handle.close() }

    // MARK: Credentials and descriptor passing

    /// Linux: every message received from now on carries its sender's
    /// credentials, checked by the kernel (``ReceivedMessage/credentials``).
    /// The corresponding C call is `setsockopt(SO_PASSCRED)`.
    /// - Throws: `.system(.notSupported)` on other platforms.
    public func setReceivesCredentials(_ on: Bool) throws(SocketError) {
        try handle.setReceivesCredentials(on)
    }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`), to `address`.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, descriptors: [CInt], to address: UnixAddress) throws(SocketError) -> Int {
        try handle.send(buffer, descriptors: descriptors, to: address, needsData: false)
    }

    /// Sends one message with `descriptors` attached, to the connected address.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, descriptors: [CInt]) throws(SocketError) -> Int {
        try handle.send(buffer, descriptors: descriptors, to: nil, needsData: false)
    }

    /// Receives one message, its sender and its descriptors (and any kept by plain receives).
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer
    ) throws(SocketError) -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try handle.receiveWithDescriptors(into: buffer, wantSender: true)
    }

    /// Whether plain reads keep descriptors that arrive with the data, for the
    /// next `receiveWithDescriptors` (on by default, so none is lost unseen).
    /// Turning it off makes plain reads a cheaper `recv`; the kernel then
    /// closes descriptors a peer sends with data those reads consume.
    public var keepsIncomingDescriptors: Bool {
        get { handle.keepsDescriptors.load(ordering: .relaxed) }
        set { handle.keepsDescriptors.store(newValue, ordering: .relaxed) }
    }

    /// The descriptor, for use with other APIs; it stays owned by this socket.
    public var descriptor: CInt { handle.descriptor }
}

extension ReceivedMessage {
    init(count: Int, isTruncated: Bool) {
        self.init(count: count, isTruncated: isTruncated, fullLength: nil, sender: nil, credentials: nil)
    }
}
