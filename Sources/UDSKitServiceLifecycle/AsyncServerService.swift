import ServiceLifecycle
import UDSKit

/// An `AsyncServer` as a swift-service-lifecycle `Service`, for a
/// `ServiceGroup` to run next to the process's other services.
///
///     let server = AsyncStreamServer(listener: listener, logger: logger) { connection, peer, context in ... }
///     let group = ServiceGroup(
///         services: [AsyncServerService(server, gracePeriod: .seconds(10))],
///         gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
///     try await group.run()
///
/// The group's graceful shutdown (a signal, `triggerGracefulShutdown()`, or
/// another service ending) shuts the server down gracefully: it stops
/// accepting at once and gives open connections `gracePeriod` to finish.
/// Cancellation, which a group uses when the graceful shutdown takes too
/// long or a service failed, closes every connection at once.
public struct AsyncServerService<Listener: ServableListener>: Service {
    /// The server this service runs.
    public let server: AsyncServer<Listener>
    /// How long open connections may go on after the graceful shutdown began.
    public let gracePeriod: Duration

    /// A service that runs `server`.
    /// - Parameters:
    ///   - server: A server that has not run yet.
    ///   - gracePeriod: How long open connections may go on once the graceful
    ///     shutdown began; then the remaining ones are closed.
    public init(_ server: AsyncServer<Listener>, gracePeriod: Duration = .seconds(5)) {
        self.server = server
        self.gracePeriod = gracePeriod
    }

    /// Runs the server until it has shut down.
    /// - Throws: What `AsyncServer.run()` throws.
    public func run() async throws {
        let server = self.server
        let gracePeriod = self.gracePeriod
        try await withGracefulShutdownHandler {
            try await server.run()
        } onGracefulShutdown: {
            server.shutdown(gracePeriod: gracePeriod)
        }
    }
}

extension AsyncServer {
    /// This server as a `Service`; see ``AsyncServerService``.
    /// - Parameter gracePeriod: How long open connections may go on once the
    ///   graceful shutdown began.
    public func service(gracePeriod: Duration = .seconds(5)) -> AsyncServerService<Listener> {
        AsyncServerService(self, gracePeriod: gracePeriod)
    }
}
