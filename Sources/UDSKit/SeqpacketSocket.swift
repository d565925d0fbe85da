/// A listening `SOCK_SEQPACKET` socket (Linux): connections that keep
/// message boundaries. On other platforms every call fails with `.unsupported`.
public final class SeqpacketListener: Sendable {
    let handle: SocketHandle
    /// The address this listener was bound to, as given.
    public let address: UnixAddress
    /// Whether binding removed a stale socket file first.
    public let replacedStaleSocket: Bool
    /// Which peers ``accept()`` lets through.
    public let accessPolicy: AccessPolicy

    init(handle: SocketHandle, address: UnixAddress, replacedStaleSocket: Bool, accessPolicy: AccessPolicy) {
        self.handle = handle
        self.address = address
        self.replacedStaleSocket = replacedStaleSocket
        self.accessPolicy = accessPolicy
    }

    /// Binds to `address` and listens, with the safe-bind rules of ``StreamListener``.
    public static func bind(
        to address: UnixAddress, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone
    ) throws(SocketError) -> SeqpacketListener {
        let handle = try SocketHandle.open(.seqpacket, operation: "bind", label: address.description)
        let replaced = try handle.bindAndListen(to: address, options: options)
        return SeqpacketListener(handle: handle, address: address, replacedStaleSocket: replaced, accessPolicy: accessPolicy)
    }

    /// Waits for the next connection. The corresponding C function is `accept4`.
    public func accept() throws(SocketError) -> (connection: SeqpacketSocket, peer: UnixAddress) {
        let (connection, peer) = try handle.accept(admitting: accessPolicy)
        return (SeqpacketSocket(handle: connection), peer)
    }

    /// The address as the kernel reports it.
    public func localAddress() throws(SocketError) -> UnixAddress { try handle.localAddress() }

    /// Stops listening and removes the socket file; later calls do nothing.
    public func close() throws(SocketError) { try handle.close() }

    /// The descriptor, for use with other APIs; it stays owned by this listener.
    public var descriptor: CInt { handle.descriptor }
}

/// A connected `SOCK_SEQPACKET` socket (Linux): reliable, ordered messages over
/// a connection. Each send is one message; each receive returns one message.
public final class SeqpacketSocket: Sendable {
    let handle: SocketHandle

    init(handle: SocketHandle) {
        self.handle = handle
    }

    /// Connects to a seqpacket listener, optionally binding `localAddress` first.
    public static func connect(
        to address: UnixAddress, from localAddress: UnixAddress? = nil, bindOptions: BindOptions = BindOptions()
    ) throws(SocketError) -> SeqpacketSocket {
        let handle = try SocketHandle.open(.seqpacket, operation: "connect", label: address.description)
        if let localAddress {
            _ = try handle.bind(to: localAddress, options: bindOptions)
        }
        try handle.connect(to: address)
        return SeqpacketSocket(handle: handle)
    }

    /// Two connected seqpacket sockets. The corresponding C function is `socketpair`.
    public static func makePair() throws(SocketError) -> (SeqpacketSocket, SeqpacketSocket) {
        let (first, second) = try SocketHandle.openPair(.seqpacket)
        return (SeqpacketSocket(handle: first), SeqpacketSocket(handle: second))
    }

    /// Sends one message. The corresponding C function is `send`.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        try handle.write(buffer)
    }

    /// Sends one message.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>) throws(SocketError) -> Int {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try handle.write(buffer) }
    }

    /// Receives one message; a count of 0 with no truncation is the end of the
    /// connection. The corresponding C function is `recvmsg`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> ReceivedMessage {
        try handle.receiveMessage(into: buffer, wantSender: false)
    }

    /// Receives one message of at most `maximumSize` bytes; empty at the end.
    public func receive(maximumSize: Int = 65536) throws(SocketError) -> (bytes: [UInt8], receipt: ReceivedMessage) {
        try handle.receiveMessage(maximumSize: maximumSize, wantSender: false)
    }

    /// Shuts down one or both directions. The corresponding C function is `shutdown`.
    public func shutdown(_ direction: ShutdownDirection) throws(SocketError) {
        try handle.shutdown(direction)
    }

    /// A receive that waits longer than `timeout` fails with `.timedOut`; `nil` waits forever.
    public func setReadTimeout(_ timeout: Duration?) throws(SocketError) {
        try handle.setTimeout(receive: true, timeout)
    }

    /// A send that waits longer than `timeout` fails with `.timedOut`; `nil` waits forever.
    public func setWriteTimeout(_ timeout: Duration?) throws(SocketError) {
        try handle.setTimeout(receive: false, timeout)
    }

    /// This side's address. The corresponding C function is `getsockname`.
    public func localAddress() throws(SocketError) -> UnixAddress { try handle.localAddress() }

    /// The peer's address. The corresponding C function is `getpeername`.
    public func peerAddress() throws(SocketError) -> UnixAddress { try handle.peerAddress() }

    /// Closes the socket once; later calls do nothing.
    public func close() throws(SocketError) { try handle.close() }

    // MARK: Credentials and descriptor passing

    /// The peer's process, user and group IDs, as the kernel recorded them at
    /// connect time. The corresponding C call is `getsockopt(SO_PEERCRED)` on
    /// Linux, `getpeereid` and `LOCAL_PEERPID` on macOS.
    public func peerCredentials() throws(SocketError) -> PeerCredentials {
        try handle.peerCredentials()
    }

    /// The peer process by pidfd (Linux 6.5+ `SO_PEERPIDFD`): it cannot be
    /// confused with a later process that reused the pid. `.unsupported` elsewhere.
    public func peerProcess() throws(SocketError) -> PeerProcess { try handle.peerProcess() }

    /// Sends one message with `descriptors` attached (`SCM_RIGHTS`).
    /// - Throws: `.invalidArgument` for an empty message, `.tooManyDescriptors` past 253.
    @discardableResult
    public func send(_ buffer: UnsafeRawBufferPointer, descriptors: [CInt]) throws(SocketError) -> Int {
        try handle.send(buffer, descriptors: descriptors, to: nil, needsData: true)
    }

    /// Sends one message with `descriptors` attached.
    @discardableResult
    public func send(_ bytes: some Sequence<UInt8>, descriptors: [CInt]) throws(SocketError) -> Int {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try send(buffer, descriptors: descriptors) }
    }

    /// Receives one message with its descriptors (and any kept by plain receives).
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer
    ) throws(SocketError) -> (message: ReceivedMessage, descriptors: [ReceivedDescriptor]) {
        try handle.receiveWithDescriptors(into: buffer, wantSender: false)
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
