/// A connected `SOCK_STREAM` socket: an ordered, reliable byte stream.
///
/// Reads return what has arrived (at most the buffer's size), and zero at the
/// end of the stream. ``writeAll(_:)-(UnsafeRawBufferPointer)`` sends every byte. Writing to a peer that
/// has closed fails with `EPIPE`; it never raises `SIGPIPE`.
///
/// All methods may be called from any thread. ``close()`` wakes calls that
/// other threads have blocked in this socket, and the descriptor is closed
/// when the last of them returns.
public final class StreamSocket: Sendable {
    let handle: SocketHandle

    init(handle: SocketHandle) {
        self.handle = handle
    }

    /// Connects to a listening socket.
    ///
    /// The corresponding C functions are `socket` and `connect`.
    /// - Parameters:
    ///   - address: The server's path or abstract name.
    ///   - localAddress: An address to bind first, so the server can tell this
    ///     client apart (a path containing the pid, say); the file is removed on close.
    ///   - bindOptions: How to bind `localAddress`.
    /// - Throws: ``SocketError`` naming `bind` or `connect` and the address.
    public static func connect(
        to address: UnixAddress, from localAddress: UnixAddress? = nil, bindOptions: BindOptions = BindOptions()
    ) throws(SocketError) -> StreamSocket {
        let handle = try SocketHandle.open(.stream, operation: "connect", label: address.description)
        if let localAddress {
            _ = try handle.bind(to: localAddress, options: bindOptions)
        }
        try handle.connect(to: address)
        return StreamSocket(handle: handle)
    }

    /// Two connected sockets, unnamed, for talking to a thread or a child process.
    ///
    /// The corresponding C function is `socketpair`.
    public static func makePair() throws(SocketError) -> (StreamSocket, StreamSocket) {
        let (first, second) = try SocketHandle.openPair(.stream)
        return (StreamSocket(handle: first), StreamSocket(handle: second))
    }

    /// Reads what has arrived, up to `buffer.count` bytes.
    ///
    /// The corresponding C function is `recv`.
    /// - Returns: The number of bytes read; 0 at the end of the stream.
    @inline(__always)
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int {
        try handle.read(into: buffer)
    }

    /// Reads what has arrived, up to `maximumCount` bytes; empty at the end of the stream.
    public func read(upTo maximumCount: Int) throws(SocketError) -> [UInt8] {
        try handle.read(upTo: maximumCount)
    }

    /// Reads exactly `buffer.count` bytes.
    /// - Throws: `.unexpectedEndOfStream` if the peer closes first.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) {
        try handle.readExactly(into: buffer)
    }

    /// Reads exactly `count` bytes.
    /// - Throws: `.unexpectedEndOfStream` if the peer closes first.
    public func readExactly(_ count: Int) throws(SocketError) -> [UInt8] {
        try handle.readExactly(count)
    }

    /// Writes some of `buffer` and returns how much; see ``writeAll(_:)-(UnsafeRawBufferPointer)``.
    ///
    /// The corresponding C function is `send` with `MSG_NOSIGNAL`.
    @inline(__always)
    public func write(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        try handle.write(buffer)
    }

    /// Writes every byte of `buffer`, continuing after partial writes.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(SocketError) {
        try handle.writeAll(buffer)
    }

    /// Writes every byte.
    public func writeAll(_ bytes: some Sequence<UInt8>) throws(SocketError) {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try handle.writeAll(buffer) }
    }

    /// Shuts down one or both directions. After `.write` the peer reads the end
    /// of the stream, and this side can still read its answer (half-close).
    ///
    /// The corresponding C function is `shutdown`.
    public func shutdown(_ direction: ShutdownDirection) throws(SocketError) {
        try handle.shutdown(direction)
    }

    /// A read that waits longer than `timeout` fails with `.timedOut`; `nil` waits forever.
    public func setReadTimeout(_ timeout: Duration?) throws(SocketError) {
        try handle.setTimeout(receive: true, timeout)
    }

    /// A write that waits longer than `timeout` fails with `.timedOut`; `nil` waits forever.
    public func setWriteTimeout(_ timeout: Duration?) throws(SocketError) {
        try handle.setTimeout(receive: false, timeout)
    }

    /// This side's address (unnamed unless bound). The corresponding C function is `getsockname`.
    public func localAddress() throws(SocketError) -> UnixAddress { try handle.localAddress() }

    /// The peer's address. The corresponding C function is `getpeername`.
    public func peerAddress() throws(SocketError) -> UnixAddress { try handle.peerAddress() }

    /// Closes the socket, once; later calls do nothing. Removes the file of an
    /// address bound with ``connect(to:from:bindOptions:)``.
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

    /// Writes every byte of `buffer`, with `descriptors` riding on the first
    /// bytes (`SCM_RIGHTS`). The descriptors stay open here; the peer gets
    /// its own copies.
    /// - Throws: `.invalidArgument` for an empty buffer (a stream needs a byte
    ///   to carry them), `.tooManyDescriptors` past 253.
    public func writeAll(_ buffer: UnsafeRawBufferPointer, descriptors: [CInt]) throws(SocketError) {
        let first = try handle.send(buffer, descriptors: descriptors, to: nil, needsData: true)
        try handle.writeAll(UnsafeRawBufferPointer(rebasing: buffer[first...]))
    }

    /// Writes every byte, with `descriptors` riding on the first.
    public func writeAll(_ bytes: some Sequence<UInt8>, descriptors: [CInt]) throws(SocketError) {
        try withContiguousBytes(bytes) { (buffer) throws(SocketError) in try writeAll(buffer, descriptors: descriptors) }
    }

    /// Reads what has arrived, with the descriptors that came with it and any
    /// that earlier plain reads kept. A read stops where descriptors are
    /// attached, so they come with the bytes they were sent with.
    /// - Throws: `.descriptorsTruncated` if the sender attached more than 253.
    public func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer
    ) throws(SocketError) -> (count: Int, descriptors: [ReceivedDescriptor]) {
        let (message, descriptors) = try handle.receiveWithDescriptors(into: buffer, wantSender: false)
        return (message.count, descriptors)
    }

    /// Whether plain reads keep descriptors that arrive with the data, for the
    /// next `receiveWithDescriptors`. Off by default: a plain read is a `recv`,
    /// and the kernel closes descriptors riding on the data it consumes, so a
    /// peer cannot fill this process's descriptor table unasked (as in Rust,
    /// Go, Python and SwiftNIO). On, at most 253 are kept (more are closed and
    /// reported once), and ``close()`` closes those never taken.
    public var keepsIncomingDescriptors: Bool {
        get { handle.keepsDescriptors.load(ordering: .relaxed) }
        set { handle.keepsDescriptors.store(newValue, ordering: .relaxed) }
    }

    /// The descriptor, for use with other APIs; it stays owned by this socket.
    public var descriptor: CInt { handle.descriptor }
}
