/// A connected byte stream over a Unix stream socket or TCP: the same
/// reads, writes, half-close and timeouts as ``StreamSocket``, whichever the
/// ``Endpoint`` names.
///
///     let connection = try Connection.connect(to: Endpoint("tcp:127.0.0.1:8080"))
///     try connection.writeAll(Array("ping\n".utf8))
///     try connection.shutdown(.write)          // the peer reads end-of-stream
///     let reply = try connection.read(upTo: 4096)
///
/// TCP connections have `TCP_NODELAY` on: small writes leave at once instead
/// of waiting to be coalesced (see ``setNoDelay(_:)``). Writing to a peer that
/// has closed fails with `EPIPE`; it never raises `SIGPIPE`.
///
/// All methods may be called from any thread; ``close()`` wakes calls other
/// threads have blocked in this connection.
public final class Connection: Sendable {
    let handle: SocketHandle
    /// What this connection was made to, or for an accepted connection, the
    /// endpoint its listener is bound to (for TCP, with the actual port).
    public let endpoint: Endpoint

    init(handle: SocketHandle, endpoint: Endpoint) {
        self.handle = handle
        self.endpoint = endpoint
    }

    /// Connects to `endpoint`: a Unix stream socket, or TCP (trying each of
    /// the host's addresses in turn).
    ///
    /// The corresponding C functions are `getaddrinfo` (TCP), `socket` and `connect`.
    /// - Parameters:
    ///   - endpoint: Where to connect.
    ///   - timeout: How long to wait for the connection (Linux); `nil` waits
    ///     as long as the kernel does.
    /// - Throws: ``SocketError`` naming `connect` and the endpoint, e.g.
    ///   `connect(tcp:127.0.0.1:9): connection refused (nothing is listening there)`.
    public static func connect(to endpoint: Endpoint, timeout: Duration? = nil) throws(SocketError) -> Connection {
        let label = endpoint.description
        switch endpoint.kind {
        case .unix(let address):
            let handle = try SocketHandle.open(.stream, operation: "connect", label: label)
            do throws(SocketError) {
                try handle.connect(to: address, timeout: timeout)
            } catch {
                try? handle.close()
                throw error
            }
            handle.currentLabel = label
            return Connection(handle: handle, endpoint: endpoint)
        case .tcp(let host, let port):
            let handle = try SocketHandle.connectTCP(host: host, port: port, label: label, timeout: timeout)
            return Connection(handle: handle, endpoint: endpoint)
        }
    }

    /// Reads what has arrived, up to `buffer.count` bytes.
    ///
    /// The corresponding C function is `recv` (`recvmsg` on a Unix socket,
    /// which keeps descriptors that ride on the data).
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

    /// Shuts down one or both directions. After `.write` the peer reads the
    /// end of the stream, and this side can still read its answer (half-close).
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

    /// This side's endpoint: an unnamed Unix address unless bound, or the
    /// local TCP address and port. The corresponding C function is `getsockname`.
    public func localEndpoint() throws(SocketError) -> Endpoint {
        guard isTCP else { return .unix(try handle.localAddress()) }
        let (host, port) = try handle.inetLocalAddress().hostAndPort
        return .tcp(host: host, port: port)
    }

    /// The peer's endpoint. The corresponding C function is `getpeername`.
    public func peerEndpoint() throws(SocketError) -> Endpoint {
        guard isTCP else { return .unix(try handle.peerAddress()) }
        let (host, port) = try handle.inetPeerAddress().hostAndPort
        return .tcp(host: host, port: port)
    }

    /// The peer's process, user and group IDs (Unix sockets only).
    /// - Throws: `.invalidArgument` for TCP, which carries no credentials.
    public func peerCredentials() throws(SocketError) -> PeerCredentials {
        guard !isTCP else { throw handle.error("getpeercred", code: .invalidArgument("TCP connections carry no peer credentials")) }
        return try handle.peerCredentials()
    }

    /// The peer process by pidfd (Unix sockets, Linux 6.5+); see
    /// ``StreamSocket/peerProcess()``.
    public func peerProcess() throws(SocketError) -> PeerProcess {
        guard !isTCP else { throw handle.error("getsockopt(SO_PEERPIDFD)", code: .invalidArgument("TCP connections carry no peer process")) }
        return try handle.peerProcess()
    }

    /// Closes the connection, once; later calls do nothing.
    public func close() throws(SocketError) { try handle.close() }

    /// The descriptor, for use with other APIs; it stays owned by this connection.
    public var descriptor: CInt { handle.descriptor }

    /// Runs `body` with the descriptor held open, for system calls UDSKit does
    /// not wrap (`splice`, say): a ``close()`` on another thread meanwhile only
    /// shuts the connection down, which wakes `body`'s blocking calls, and the
    /// descriptor is closed once `body` returns, so it is never reused under it.
    /// - Parameters:
    ///   - operation: The name errors give, such as `splice`.
    ///   - body: What to do with the descriptor; it must not close it.
    /// - Throws: `.closed` if the connection is closed already, or what `body` throws.
    public func withDescriptor<R>(
        _ operation: String, _ body: (CInt) throws(SocketError) -> R
    ) throws(SocketError) -> R {
        try handle.withDescriptor(operation, body)
    }
}
