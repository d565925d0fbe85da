/// A listening `SOCK_STREAM` socket: it binds an address safely and accepts
/// connections.
///
///     let listener = try StreamListener.bind(to: UnixAddress("./uds_socket"))
///     let (connection, peer) = try listener.accept()
///
/// Binding replaces a stale socket file (one nobody listens on) and says so in
/// ``replacedStaleSocket``; it fails with `.addressInUse` when a server is live
/// there, and with `.notASocket` when the path is any other kind of file. Both
/// are left untouched. Closing removes the socket file, if the path still
/// names the socket this listener created.
public final class StreamListener: Sendable {
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

    /// Binds to `address` and listens.
    ///
    /// The corresponding C functions are `socket`, `bind` and `listen`.
    /// - Parameters:
    ///   - address: A path or an abstract name.
    ///   - options: Mode, owner and group of the socket file, stale-file policy, backlog.
    ///   - accessPolicy: Which peers ``accept()`` lets through; others are closed at once.
    /// - Throws: ``SocketError`` naming `bind` or `listen` and the address.
    public static func bind(
        to address: UnixAddress, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone
    ) throws(SocketError) -> StreamListener {
        let handle = try SocketHandle.open(.stream, operation: "bind", label: address.description)
        let replaced = try handle.bindAndListen(to: address, options: options)
        return StreamListener(handle: handle, address: address, replacedStaleSocket: replaced, accessPolicy: accessPolicy)
    }

    /// Waits for the next connection.
    ///
    /// The corresponding C function is `accept4` (Linux) or `accept`.
    /// - Returns: The connection, close-on-exec, and the peer's address
    ///   (``UnixAddress/unnamed`` unless the client bound one).
    public func accept() throws(SocketError) -> (connection: StreamSocket, peer: UnixAddress) {
        let (connection, peer) = try handle.accept(admitting: accessPolicy)
        return (StreamSocket(handle: connection), peer)
    }

    /// The address as the kernel reports it.
    public func localAddress() throws(SocketError) -> UnixAddress { try handle.localAddress() }

    /// Keeps the socket file when this listener closes: for handing the path
    /// over to another process.
    public func keepSocketFileOnClose() { handle.releaseBoundFile() }

    /// Stops listening and removes the socket file. Calls blocked in
    /// ``accept()`` on other threads fail with `.closed` (Linux). Later calls do nothing.
    public func close() throws(SocketError) { try handle.close() }

    /// The descriptor, for use with other APIs; it stays owned by this listener.
    public var descriptor: CInt { handle.descriptor }
}
