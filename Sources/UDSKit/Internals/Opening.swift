import SystemPackage

// How every socket type is made from an endpoint: which kinds of endpoint
// each supports is decided here, once, for both API levels.

/// What a listener was bound to, as its public properties report it.
struct ListeningBinding {
    let endpoint: Endpoint
    let replacedStaleSocket: Bool
    let accessPolicy: AccessPolicy
}

extension SocketHandle {
    /// Binds `endpoint` and listens.
    /// - Parameter kind: `.stream` (Unix or TCP) or `.seqpacket` (Unix only).
    static func listen(
        on endpoint: Endpoint, kind: SocketKind, options: BindOptions, admitting policy: AccessPolicy, nonBlocking: Bool
    ) throws(SocketError) -> (SocketHandle, ListeningBinding) {
        let label = endpoint.description
        switch endpoint.kind {
        case .unix(let address):
            let handle = try open(kind, operation: "bind", label: label, nonBlocking: nonBlocking)
            let replaced: Bool
            do throws(SocketError) {
                replaced = try handle.bindAndListen(to: address, options: options)
            } catch {
                try? handle.close()
                throw error
            }
            handle.currentLabel = label
            return (handle, ListeningBinding(endpoint: endpoint, replacedStaleSocket: replaced, accessPolicy: policy))
        case .tcp(let host, let port):
            try refuseTCP(kind, "bind", label)
            if policy.admits != nil {
                throw SocketError("bind", address: label, code: .invalidArgument(
                    "an access policy needs peer credentials, which TCP connections do not carry"))
            }
            let handle = try listenTCP(host: host, port: port, label: label, options: options, nonBlocking: nonBlocking)
            // Errors of accepted connections name the port really bound, not 0.
            if let bound = try? handle.localEndpoint() { handle.currentLabel = bound.description }
            return (handle, ListeningBinding(endpoint: endpoint, replacedStaleSocket: false, accessPolicy: policy))
        }
    }

    /// A socket to connect to `endpoint`, optionally bound to `localAddress`
    /// first; for TCP, the resolved addresses to try in turn. The connect
    /// itself is the caller's (blocking or async).
    static func forConnecting(
        to endpoint: Endpoint, kind: SocketKind, from localAddress: UnixAddress?, bindOptions: BindOptions,
        nonBlocking: Bool
    ) throws(SocketError) -> ConnectTarget {
        let label = endpoint.description
        switch endpoint.kind {
        case .unix(let address):
            let handle = try open(kind, operation: "connect", label: label, nonBlocking: nonBlocking)
            if let localAddress {
                do throws(SocketError) {
                    _ = try handle.bind(to: localAddress, options: bindOptions)
                } catch {
                    try? handle.close()
                    throw error
                }
            }
            return .unix(handle, address)
        case .tcp(let host, let port):
            try refuseTCP(kind, "connect", label)
            if localAddress != nil {
                throw SocketError("connect", address: label, code: .unsupported("binding a Unix address before connecting on TCP is"))
            }
            return .tcp(try resolve(host, port, passive: false, operation: "connect", label: label), label)
        }
    }

    enum ConnectTarget {
        case unix(SocketHandle, UnixAddress)
        case tcp([InetAddress], String)
    }

    /// Only byte streams have a TCP form.
    private static func refuseTCP(_ kind: SocketKind, _ operation: String, _ label: String) throws(SocketError) {
        if kind != .stream {
            throw SocketError(operation, address: label, code: .unsupported("TCP for \(kind == .seqpacket ? "seqpacket" : "datagram") sockets is"))
        }
    }
}

/// What a TCP connect does at either level, written once (only the waiting
/// differs): the host's addresses in the resolver's order, a new socket for
/// each, TCP_NODELAY once connected, and, if none accepts, the first
/// address's error, usually the one that says most.
struct TCPConnectAttempts<Failure: Error> {
    let label: String
    fileprivate var firstError: Failure?

    init(label: String) {
        self.label = label
    }

    /// A new socket for `address`, to connect.
    func open(for address: InetAddress, nonBlocking: Bool) throws(SocketError) -> SocketHandle {
        try SocketHandle.openTCP(family: address.family, label: label, nonBlocking: nonBlocking)
    }

    /// `handle` connected: set it up as every TCP socket of UDSKit is.
    func connected(_ handle: SocketHandle) throws(SocketError) {
        try handle.setNoDelay(true)
    }

    /// Connecting `handle` failed with `error`: close it, and remember the first failure.
    mutating func failed(_ handle: SocketHandle, _ error: Failure) {
        try? handle.close()
        if firstError == nil { firstError = error }
    }

    fileprivate var noAddresses: SocketError {
        SocketError("connect", address: label, code: .nameResolution("no addresses"))
    }
}

extension TCPConnectAttempts where Failure == SocketError {
    /// What to throw when no address accepted.
    func noneAccepted() -> SocketError { firstError ?? noAddresses }
}

extension TCPConnectAttempts where Failure == any Error {
    /// What to throw when no address accepted.
    func noneAccepted() -> any Error { firstError ?? noAddresses }
}

/// Something that names where a socket connects or binds: an ``Endpoint``,
/// a ``UnixAddress`` or a `FilePath`. Every `connect` and `bind` takes one.
public protocol EndpointConvertible: Sendable {
    /// The endpoint.
    /// - Throws: ``SocketError`` for a path that cannot be a socket address.
    func makeEndpoint() throws(SocketError) -> Endpoint
}

extension Endpoint: EndpointConvertible {
    /// The endpoint itself.
    public func makeEndpoint() -> Endpoint { self }
}

extension UnixAddress: EndpointConvertible {
    /// The address as a Unix endpoint.
    public func makeEndpoint() -> Endpoint { .unix(self) }
}

extension FilePath: EndpointConvertible {
    /// The path as a Unix endpoint.
    /// - Throws: what ``UnixAddress/init(_:)-(FilePath)`` throws.
    public func makeEndpoint() throws(SocketError) -> Endpoint { .unix(try UnixAddress(self)) }
}

extension UnixAddress {
    /// A filesystem path, as its bytes (a path need not be UTF-8).
    /// - Throws: ``SocketError`` with `.emptyPath` or `.pathTooLong(length:limit:)`.
    public init(_ path: FilePath) throws(SocketError) {
        let bytes = path.withPlatformString { pointer in
            Array(UnsafeBufferPointer(start: pointer, count: strlenOf(pointer))).map { UInt8(bitPattern: $0) }
        }
        try self.init(pathBytes: bytes)
    }
}

private func strlenOf(_ pointer: UnsafePointer<CChar>) -> Int {
    var count = 0
    while pointer[count] != 0 { count += 1 }
    return count
}

// So that `connect(to: .tcp(host: "db", port: 5432))` and `bind(to: .unix(address))`
// read as they would with a plain `Endpoint` parameter.
extension EndpointConvertible where Self == Endpoint {
    /// A Unix socket address; see ``Endpoint/unix(_:)``.
    public static func unix(_ address: UnixAddress) -> Endpoint { Endpoint(kind: .unix(address)) }

    /// A TCP host and port; see ``Endpoint/tcp(host:port:)``.
    public static func tcp(host: String, port: UInt16) -> Endpoint { Endpoint(kind: .tcp(host: host, port: port)) }
}

extension EndpointConvertible where Self == UnixAddress {
    /// The address with no name; see ``UnixAddress/unnamed``.
    public static var unnamed: UnixAddress { UnixAddress.unnamed }
}
