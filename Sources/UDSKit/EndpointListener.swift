/// A listening socket on a Unix address or a TCP port, accepting
/// ``Connection``s: the server side of ``Endpoint``.
///
///     let listener = try EndpointListener.bind(to: Endpoint("tcp:0"))   // any free port
///     print(try listener.localEndpoint())                             // tcp:127.0.0.1:41234
///     let (connection, peer) = try listener.accept()
///
/// A Unix address is bound with the safe-bind rules of ``StreamListener``: a
/// stale socket file is replaced, a live server's socket and any other file
/// are left alone, and the socket file is removed on close. A TCP port is
/// bound with `SO_REUSEADDR`; `tcp:PORT` without a host binds the loopback
/// address only, so nothing beyond this machine can connect unless a host
/// such as `0.0.0.0` or `[::]` is named.
public final class EndpointListener: Sendable {
    let handle: SocketHandle
    /// The endpoint as given (a TCP port 0 stays 0; see ``localEndpoint()``).
    public let endpoint: Endpoint
    /// What accepted connections report as their ``Connection/endpoint``: for
    /// TCP the address and port actually bound.
    private let boundEndpoint: Endpoint
    /// Whether binding removed a stale socket file first (Unix only).
    public let replacedStaleSocket: Bool
    /// Which peers ``accept()`` lets through (Unix only).
    public let accessPolicy: AccessPolicy

    private init(
        handle: SocketHandle, endpoint: Endpoint, boundEndpoint: Endpoint? = nil,
        replacedStaleSocket: Bool, accessPolicy: AccessPolicy
    ) {
        self.handle = handle
        self.endpoint = endpoint
        self.boundEndpoint = boundEndpoint ?? endpoint
        self.replacedStaleSocket = replacedStaleSocket
        self.accessPolicy = accessPolicy
    }

    /// Binds `endpoint` and listens.
    ///
    /// The corresponding C functions are `getaddrinfo` (TCP), `socket`, `bind` and `listen`.
    /// - Parameters:
    ///   - endpoint: A Unix path or abstract name, or a TCP host and port.
    ///   - options: For a Unix socket file: mode, owner, group, stale-file
    ///     policy. The backlog applies to both kinds.
    ///   - accessPolicy: Which peers ``accept()`` lets through, by their
    ///     credentials; Unix sockets only.
    /// - Throws: ``SocketError`` naming `bind` or `listen` and the endpoint;
    ///   `.invalidArgument` for an access policy on a TCP endpoint.
    public static func bind(
        to endpoint: Endpoint, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone
    ) throws(SocketError) -> EndpointListener {
        let label = endpoint.description
        switch endpoint.kind {
        case .unix(let address):
            let handle = try SocketHandle.open(.stream, operation: "bind", label: label)
            let replaced: Bool
            do throws(SocketError) {
                replaced = try handle.bindAndListen(to: address, options: options)
            } catch {
                try? handle.close()
                throw error
            }
            handle.currentLabel = label
            return EndpointListener(handle: handle, endpoint: endpoint, replacedStaleSocket: replaced, accessPolicy: accessPolicy)
        case .tcp(let host, let port):
            if accessPolicy.admits != nil {
                throw SocketError("bind", address: label, code: .invalidArgument(
                    "an access policy needs peer credentials, which TCP connections do not carry"))
            }
            let handle = try SocketHandle.listenTCP(host: host, port: port, label: label, options: options)
            // Errors of accepted connections name the port really bound, not 0.
            let (boundHost, boundPort) = (try? handle.inetLocalAddress().hostAndPort) ?? (host, port)
            let bound = Endpoint.tcp(host: boundHost, port: boundPort)
            handle.currentLabel = bound.description
            return EndpointListener(
                handle: handle, endpoint: endpoint, boundEndpoint: bound, replacedStaleSocket: false,
                accessPolicy: accessPolicy)
        }
    }

    /// Waits for the next connection.
    ///
    /// The corresponding C function is `accept4` (Linux) or `accept`.
    /// - Returns: The connection, close-on-exec (TCP: with `TCP_NODELAY` on),
    ///   and the peer's endpoint: its TCP address and port, or its Unix
    ///   address (unnamed unless the client bound one).
    public func accept() throws(SocketError) -> (connection: Connection, peer: Endpoint) {
        if handle.kind == .tcp {
            let (connection, address) = try handle.acceptTCP()
            let (host, port) = address.hostAndPort
            return (Connection(handle: connection, endpoint: boundEndpoint), .tcp(host: host, port: port))
        }
        let (connection, peer) = try handle.accept(admitting: accessPolicy)
        return (Connection(handle: connection, endpoint: boundEndpoint), .unix(peer))
    }

    /// The endpoint as the kernel reports it: for TCP, the address and the
    /// port actually bound, which is how to learn the port after binding port 0.
    /// The corresponding C function is `getsockname`.
    public func localEndpoint() throws(SocketError) -> Endpoint {
        guard handle.kind == .tcp else { return .unix(try handle.localAddress()) }
        let (host, port) = try handle.inetLocalAddress().hostAndPort
        return .tcp(host: host, port: port)
    }

    /// Keeps the socket file when this listener closes (Unix paths only).
    public func keepSocketFileOnClose() { handle.releaseBoundFile() }

    /// Stops listening and, for a Unix path, removes the socket file. Calls
    /// blocked in ``accept()`` on other threads fail with `.closed` (Linux).
    /// Later calls do nothing.
    public func close() throws(SocketError) { try handle.close() }

    /// The descriptor, for use with other APIs; it stays owned by this listener.
    public var descriptor: CInt { handle.descriptor }
}
