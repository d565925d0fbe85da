import Logging
import SystemPackage

/// A listening `SOCK_SEQPACKET` socket (Linux): connections that keep
/// message boundaries, with the safe bind of ``Listener``. On other platforms
/// every call fails with `.unsupported`, as does a TCP endpoint.
public final class SeqpacketListener: Listener, @unchecked Sendable {
    override init(handle: SocketHandle, bound: ListeningBinding) {
        super.init(handle: handle, bound: bound)
    }

    /// Binds to `address` (a path or an abstract name) and listens.
    ///
    /// The corresponding C functions are `socket`, `bind` and `listen`.
    public static func bind(
        to address: some EndpointConvertible, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone
    ) throws(SocketError) -> SeqpacketListener {
        let (handle, bound) = try SocketHandle.listen(
            on: address.makeEndpoint(), kind: .seqpacket, options: options, admitting: accessPolicy, nonBlocking: false)
        return SeqpacketListener(handle: handle, bound: bound)
    }

    /// Takes over a listening seqpacket socket, checked with the kernel first.
    /// `logger` is told of refusals and accept back-off (an adopted listener has no ``BindOptions``).
    public init(
        adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone, logger: Logger? = nil
    ) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .seqpacket, listening: true))
        super.init(handle: handle, bound: try handle.adoptedBinding(admitting: accessPolicy, logger: logger))
    }

    /// Waits for the next connection the access policy admits; see
    /// ``StreamListener/accept(timeout:)``. The corresponding C function is `accept4`.
    public func accept(timeout: Duration? = nil) throws(SocketError) -> (connection: SeqpacketSocket, peer: UnixAddress) {
        let (connection, peer) = try handle.accept(admitting: accessPolicy, deadline: .after(timeout))
        return (SeqpacketSocket(handle: connection), peer.unixAddress ?? .unnamed)
    }

    /// The connections, as they arrive; the sequence ends when the listener closes.
    public var connections: IncomingConnections<SeqpacketSocket, UnixAddress> {
        IncomingConnections { () throws(SocketError) in try self.accept() }
    }
}

/// A connected `SOCK_SEQPACKET` socket (Linux): reliable, ordered messages over
/// a connection. Each send is one message; each receive returns one message
/// (see ``MessageSocket``).
public final class SeqpacketSocket: Socket, MessageSocket, @unchecked Sendable {
    override init(handle: SocketHandle) {
        super.init(handle: handle)
    }

    /// Connects to a seqpacket listener, optionally binding `localAddress` first.
    /// - Parameters:
    ///   - address: The listener's path or abstract name.
    ///   - localAddress: An address to bind first; its file is removed on close.
    ///   - bindOptions: How to bind `localAddress`.
    ///   - timeout: How long to wait for room in a full backlog; `nil` waits.
    public static func connect(
        to address: some EndpointConvertible, from localAddress: UnixAddress? = nil,
        bindOptions: BindOptions = BindOptions(), timeout: Duration? = nil
    ) throws(SocketError) -> SeqpacketSocket {
        guard case .unix(let handle, let target) = try SocketHandle.forConnecting(
            to: address.makeEndpoint(), kind: .seqpacket, from: localAddress, bindOptions: bindOptions, nonBlocking: false)
        else { preconditionFailure("seqpacket endpoints are Unix addresses") }
        do throws(SocketError) {
            try handle.connect(to: target, timeout: timeout)
        } catch {
            try? handle.close()
            throw error
        }
        return SeqpacketSocket(handle: handle)
    }

    /// Two connected seqpacket sockets. The corresponding C function is `socketpair`.
    public static func makePair() throws(SocketError) -> (SeqpacketSocket, SeqpacketSocket) {
        let (first, second) = try SocketHandle.openPair(.seqpacket)
        return (SeqpacketSocket(handle: first), SeqpacketSocket(handle: second))
    }

    /// Takes over a connected seqpacket socket, checked with the kernel first.
    public init(adopting descriptor: FileDescriptor) throws(SocketError) {
        super.init(handle: try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .seqpacket, listening: false)))
    }
}
