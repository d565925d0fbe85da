/// A listener an ``AsyncServer`` can serve: it accepts connections
/// asynchronously and stops when closed.
///
/// ``AsyncStreamListener`` and ``AsyncSeqpacketListener`` conform.
public protocol ServableListener: Sendable {
    /// What `accept` returns a connection as.
    associatedtype Connection: ServableConnection
    /// What `accept` says the peer is.
    associatedtype Peer: Sendable

    /// Waits for the next connection the listener admits.
    /// - Throws: ``SocketError`` `.closed` once the listener is closed; other
    ///   errors end the server.
    func accept(timeout: Duration?) async throws -> (connection: Connection, peer: Peer)

    /// Stops listening (and removes the socket file the listener created).
    func close() throws(SocketError)

    /// The loop that watches the listener, where the accept loop runs.
    var eventLoop: EventLoop { get }
}

/// A connection an ``AsyncServer`` can serve and cut.
///
/// ``AsyncStreamSocket`` and ``AsyncSeqpacketSocket`` conform.
public protocol ServableConnection: Sendable {
    /// Closes the connection: its waiting operations fail with `.closed`.
    func close() throws(SocketError)

    /// The loop that watches the connection, which its task prefers as executor.
    var eventLoop: EventLoop { get }
}

extension AsyncStreamListener: ServableListener {}
extension AsyncSeqpacketListener: ServableListener {}
extension AsyncStreamSocket: ServableConnection {}
extension AsyncSeqpacketSocket: ServableConnection {}
