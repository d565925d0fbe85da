import Logging
import SystemPackage

/// A listening stream socket on a Unix address or a TCP port: it binds
/// safely (see ``Listener``) and accepts ``StreamSocket``s.
///
///     let listener = try StreamListener.bind(to: UnixAddress("./uds_socket"))   // or Endpoint("tcp:0")
///     let (connection, peer) = try listener.accept()
///
/// ``AsyncStreamListener`` has the same members, async.
public final class StreamListener: Listener, @unchecked Sendable {
    override init(handle: SocketHandle, bound: ListeningBinding) {
        super.init(handle: handle, bound: bound)
    }

    /// Binds to `endpoint` and listens.
    ///
    /// The corresponding C functions are `getaddrinfo` (TCP), `socket`, `bind` and `listen`.
    /// - Parameters:
    ///   - endpoint: A Unix path or abstract name, or a TCP host and port.
    ///   - options: For a Unix socket file: mode, owner, group, stale-file
    ///     policy. The backlog applies to both kinds.
    ///   - accessPolicy: Which peers ``accept(timeout:)`` lets through, by
    ///     their credentials; others are closed at once. Unix sockets only.
    /// - Throws: ``SocketError`` naming `bind` or `listen` and the endpoint;
    ///   `.invalidArgument` for an access policy on a TCP endpoint.
    public static func bind(
        to endpoint: some EndpointConvertible, options: BindOptions = BindOptions(),
        admitting accessPolicy: AccessPolicy = .everyone
    ) throws(SocketError) -> StreamListener {
        let (handle, bound) = try SocketHandle.listen(
            on: endpoint.makeEndpoint(), kind: .stream, options: options, admitting: accessPolicy, nonBlocking: false)
        return StreamListener(handle: handle, bound: bound)
    }

    /// Takes over a listening stream socket, Unix or TCP, checked with the kernel first.
    /// `logger` is told of refusals and accept back-off (an adopted listener has no ``BindOptions``).
    public init(
        adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone, logger: Logger? = nil
    ) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: true))
        super.init(handle: handle, bound: try handle.adoptedBinding(admitting: accessPolicy, logger: logger))
    }

    /// Waits for the next connection the access policy admits. Running out
    /// of descriptors or memory does not end it: the listener sheds or pauses
    /// and goes on (see ``BindOptions/onAcceptRecovery``).
    ///
    /// The corresponding C function is `accept4` (Linux) or `accept`.
    /// - Returns: The connection, close-on-exec (TCP: with `TCP_NODELAY` on),
    ///   and the peer's endpoint: its TCP address and port, or its Unix
    ///   address (unnamed unless the client bound one).
    /// - Throws: `.closed` once the listener is closed, `.timedOut`.
    public func accept(timeout: Duration? = nil) throws(SocketError) -> (connection: StreamSocket, peer: Endpoint) {
        let (connection, peer) = try handle.accept(admitting: accessPolicy, deadline: .after(timeout))
        return (StreamSocket(handle: connection), peer)
    }

    /// The connections, as they arrive; the sequence ends when the listener
    /// closes. Each element is a `Result`, as with Rust's `incoming()`: a
    /// failed accept does not end the loop unless the caller decides so.
    public var connections: IncomingConnections<StreamSocket, Endpoint> {
        IncomingConnections { () throws(SocketError) in try self.accept() }
    }
}

/// Connections as a blocking listener accepts them: a `Sequence` that ends
/// when the listener is closed.
public struct IncomingConnections<Connection: PeerSocket, Peer: Sendable>: Sequence, Sendable {
    /// An accepted connection and its peer, or why the accept failed.
    public typealias Element = Result<(connection: Connection, peer: Peer), SocketError>
    let accept: @Sendable () throws(SocketError) -> (connection: Connection, peer: Peer)

    /// Accepts one connection per call.
    public struct Iterator: IteratorProtocol {
        let accept: @Sendable () throws(SocketError) -> (connection: Connection, peer: Peer)

        /// The next connection (or failure); `nil` once the listener is closed.
        public mutating func next() -> Element? {
            do throws(SocketError) {
                return .success(try accept())
            } catch where error.code == .closed {
                return nil
            } catch {
                return .failure(error)
            }
        }
    }

    /// An iterator that accepts from the listener.
    public func makeIterator() -> Iterator { Iterator(accept: accept) }
}
