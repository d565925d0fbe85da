import Logging
import Synchronization

/// A server for stream connections; see ``AsyncServer``.
public typealias AsyncStreamServer = AsyncServer<AsyncStreamListener>

/// A server for seqpacket connections; see ``AsyncServer``.
public typealias AsyncSeqpacketServer = AsyncServer<AsyncSeqpacketListener>

/// Accepts connections on a listener and serves each in a child task of its
/// own, until a graceful shutdown: stop accepting at once, let open
/// connections finish up to a deadline, then close the rest.
///
///     let listener = try AsyncStreamListener.bind(to: UnixAddress(path: "/run/echo.sock"))
///     let server = AsyncStreamServer(listener: listener, logger: logger) { connection, peer, context in
///         while !context.isShuttingDown {
///             let bytes = try await connection.read(upTo: 4096)
///             if bytes.isEmpty { return }
///             try await connection.writeAll(bytes)
///         }
///     }
///     // Elsewhere, at SIGTERM: server.shutdown(gracePeriod: .seconds(5))
///     try await server.run()
///
/// ``shutdown(gracePeriod:)`` may be called from any thread or task, before
/// or while ``run()`` runs:
///
/// 1. The listener is closed at once: new connects are refused, and its
///    socket file (if it created one) is removed. Handlers can see
///    ``ConnectionContext/isShuttingDown``, or wait for it, to say goodbye.
/// 2. Open connections go on until their handlers return, or until the
///    grace period ends.
/// 3. At the deadline, the connections still open are closed (their pending
///    operations fail with `.closed`) and their tasks are cancelled.
///
/// ``run()`` returns once every connection task has ended. Cancelling the
/// task that runs it shuts down at once, as a grace period of zero does:
/// the connections' tasks are cancelled, and their pending operations
/// throw `CancellationError` (or `.closed`, in a connection accepted as the
/// cancellation came, which the shutdown closes at once).
///
/// A connection's task is cancelled only through the server (the runtime
/// cancels it with ``run()``'s task, and the deadline cuts it), so its waits
/// on its own connection install no cancellation handler of their own: the
/// server ends them. A handler that cancels its own task by other means
/// (`withUnsafeCurrentTask`) does not end them; closing the connection does.
///
/// Each connection's task prefers the connection's event loop as its
/// executor, so that readiness wakes it without a thread hop. A handler that
/// throws ends only its own connection: the error goes to `onConnectionError`
/// and the logger. A handler must return once its connection is closed or
/// its task cancelled; one that waits for something else keeps ``run()``
/// from returning.
public final class AsyncServer<Listener: ServableListener>: Sendable {
    /// Serves one connection; the server closes it when this returns.
    public typealias Handler =
        @Sendable (_ connection: Listener.Connection, _ peer: Listener.Peer, _ context: ConnectionContext) async throws -> Void

    /// The listener this server accepts on; the server closes it.
    public let listener: Listener
    private let handler: Handler
    private let logger: Logger?
    private let onConnectionError: (@Sendable (_ error: any Error, _ connection: Int) -> Void)?
    private let state = Mutex(State())
    /// Fired when shutdown begins, for handlers that wait for it.
    private let shutdownBegan = Flare()

    private struct State: ~Copyable {
        var started = false
        /// When the connections still open are closed; `nil` until shutdown begins.
        var deadline: ContinuousClock.Instant?
        var connections: [Int: Listener.Connection] = [:]
        var lastID = 0
        /// The connections still open at the deadline were closed: what
        /// their handlers throw then is the cut, not a failure.
        var cut = false
        /// Fired when the deadline moves or the last connection ends during
        /// shutdown, and then replaced: the drain looks at the state again.
        var change = Flare()

        mutating func takeChange() -> Flare {
            defer { change = Flare() }
            return change
        }
    }

    /// A server that will accept on `listener` once ``run()`` is called.
    /// - Parameters:
    ///   - listener: A listening socket; the server owns it from now on and
    ///     closes it when it shuts down.
    ///   - logger: Told when shutdown begins and ends (info), how many
    ///     connections were cut at the deadline (notice), and of handler
    ///     errors (warning). A listener that has no logger of its own (one
    ///     adopted from socket activation) logs its refusals and accept
    ///     recovery here too. `nil` logs nothing.
    ///   - onConnectionError: Called with the error a handler threw and the
    ///     connection's number; not for the errors of connections the
    ///     deadline cut.
    ///   - handler: Serves one connection, in a task of its own.
    public init(
        listener: Listener, logger: Logger? = nil,
        onConnectionError: (@Sendable (_ error: any Error, _ connection: Int) -> Void)? = nil,
        handler: @escaping Handler
    ) {
        self.listener = listener
        self.logger = logger
        self.onConnectionError = onConnectionError
        self.handler = handler
        // An adopted listener (socket activation) had no BindOptions to name one.
        if let logger, let socket = listener as? Socket { socket.handle.adoptLogger(logger) }
    }

    /// Whether shutdown has begun.
    public var isShuttingDown: Bool { shutdownBegan.isFired }

    /// How many connections are being served now.
    public var openConnections: Int { state.withLock { $0.connections.count } }

    /// Accepts and serves connections until the server has shut down and
    /// every connection task has ended.
    /// - Throws: ``AsyncServerError/alreadyRun`` if called a second time; an
    ///   accept failure the listener could not get through (after shutting
    ///   down as a grace period of zero does).
    public func run() async throws {
        let first = state.withLock { state in
            defer { state.started = true }
            return !state.started
        }
        guard first else { throw AsyncServerError.alreadyRun }
        // The accept loop on the listener's loop; each connection on its own.
        let failure = await withTaskExecutorPreference(listener.eventLoop) {
            // The connections' tasks have no cancellation handler of their own (see `serve`).
            await withTaskCancellationHandler {
                await serveConnections()
            } onCancel: {
                cancelConnectionWaits()
            }
        }
        logger?.info("server stopped")
        if let failure { throw failure }
    }

    /// Accepts until shutdown, serving each connection in a child task, and
    /// returns once they have all ended: with the accept failure that ended
    /// it, if one did.
    private func serveConnections() async -> (any Error)? {
        var failure: (any Error)?
        // The throwing kind, though neither a child nor the body throws (so
        // `try?` drops nothing): its tasks take their closure as it is, where
        // the other kind wraps each in a thunk, two more frames on every idle
        // connection's task.
        try? await withThrowingDiscardingTaskGroup { group in
            while true {
                let connection: Listener.Connection
                let peer: Listener.Peer
                do {
                    (connection, peer) = try await listener.accept(timeout: nil)
                } catch let error as SocketError where error.code == .closed {
                    break  // Shutdown closed it (or its owner did).
                } catch is CancellationError {
                    break
                } catch {
                    failure = error
                    logger?.error("accept failed; shutting down", metadata: [LogKey.error: "\(error)"])
                    break
                }
                // Counted before its task starts, so that a shutdown that
                // begins now waits for it too.
                let id = state.withLock { state in
                    state.lastID += 1
                    state.connections[state.lastID] = connection
                    return state.lastID
                }
                let context = ConnectionContext(id: id, shutdownBegan: shutdownBegan)
                group.addTask(executorPreference: connection.eventLoop) {
                    await self.serve(connection, peer: peer, context: context)
                }
            }
            // However accepting ended, it is a shutdown; cancellation or a
            // failure leaves no grace.
            beginShutdown(gracePeriod: Task.isCancelled || failure != nil ? .zero : nil)
            await drain()
            cutRemaining()
            group.cancelAll()
        }
        return failure
    }

    /// Runs the handler for one connection, in its task, and finishes it.
    ///
    /// An idle connection's task holds this frame and the handler's while it
    /// waits, and the runtime gives a task one slab of about a kilobyte for
    /// its frames before it opens a second: so nothing more is here. The task
    /// owns its connection's waits (``Registration/adoptOwner()``) and the
    /// server ends them when the task is cancelled, which only the server's
    /// own group does: no cancellation handler per connection, no task-local
    /// scope (their frames took an idle connection past the first slab).
    @inline(never)
    private func serve(_ connection: Listener.Connection, peer: Listener.Peer, context: ConnectionContext) async {
        let registration = Self.registration(of: connection)
        registration?.adoptOwner()
        let failure: (any Error)?
        do {
            try await handler(connection, peer, context)
            failure = nil
        } catch {
            failure = error
        }
        registration?.releaseOwner()
        finish(connection, id: context.id, failure: failure)
    }

    /// What the connection's waits go through, for a socket of UDSKit's.
    private static func registration(of connection: Listener.Connection) -> Registration? {
        (connection as? Socket)?.core?.registration
    }

    /// The server's task was cancelled, and with it (by the runtime) every
    /// connection's task: end the waits of each task on its own connection,
    /// which have no cancellation handler of their own.
    private func cancelConnectionWaits() {
        let open = state.withLock { Array($0.connections.values) }
        for connection in open { Self.registration(of: connection)?.cancelOwnerWait() }
    }

    /// Begins a graceful shutdown, or brings its deadline closer: stops
    /// accepting at once, and closes the connections still open after
    /// `gracePeriod`. Returns at once; ``run()`` returns when all has ended.
    /// Callable from any thread, any number of times: a later call can only
    /// move the deadline earlier.
    /// - Parameter gracePeriod: How long open connections may go on; `.zero`
    ///   closes them now.
    public func shutdown(gracePeriod: Duration) {
        beginShutdown(gracePeriod: gracePeriod)
    }

    /// `nil`: the listener ended by itself; begins a shutdown with no grace
    /// if none began, and leaves one that began as it is.
    private func beginShutdown(gracePeriod: Duration?) {
        let now = ContinuousClock.now
        let deadline = now.advanced(by: max(gracePeriod ?? .zero, .zero))
        let (began, open, change) = state.withLock { state -> (Bool, Int, Flare?) in
            if let current = state.deadline {
                guard gracePeriod != nil, deadline < current else { return (false, 0, nil) }
                state.deadline = deadline
                return (false, 0, state.takeChange())
            }
            state.deadline = deadline
            return (true, state.connections.count, state.takeChange())
        }
        if began {
            logger?.info("shutting down: no longer accepting", metadata: [
                LogKey.connections: "\(open)",
                LogKey.gracePeriod: "\(gracePeriod ?? .zero)",
            ])
            // First, so that a handler that sees the shutdown knows new
            // connects are already refused.
            try? listener.close()
            shutdownBegan.fire()
        }
        change?.fire()
    }

    /// Waits until every connection has ended or the deadline has passed.
    private func drain() async {
        let loop = listener.eventLoop
        while !Task.isCancelled {
            let (deadline, change, drained) = state.withLock { ($0.deadline, $0.change, $0.connections.isEmpty) }
            guard let deadline, !drained, ContinuousClock.now < deadline else { return }
            await withTaskGroup(of: Void.self) { race in
                race.addTask {
                    do {
                        try await loop.sleep(until: deadline)
                    } catch is CancellationError {
                    } catch {
                        // The loop stopped: sleep on the global executor.
                        try? await Task.sleep(until: deadline, clock: .continuous)
                    }
                }
                race.addTask { await change.wait() }
                await race.next()
                race.cancelAll()
            }
        }
    }

    /// Closes the connections still open: their handlers' pending operations
    /// fail with `.closed`, and the caller cancels their tasks.
    private func cutRemaining() {
        let remaining = state.withLock { state in
            state.cut = true
            return Array(state.connections.values)
        }
        if !remaining.isEmpty {
            logger?.notice("shutdown deadline: closing the connections still open", metadata: [
                LogKey.connections: "\(remaining.count)"
            ])
        }
        for connection in remaining { try? connection.close() }
    }

    /// Reports what the handler threw (unless it is the shutdown's cut),
    /// closes the connection and forgets it.
    @inline(never)
    private func finish(_ connection: Listener.Connection, id: Int, failure: (any Error)?) {
        if let error = failure {
            let cut = state.withLock { $0.cut }
            // What a cut connection's handler throws is the cut, not a fault.
            let isCut = cut && (error is CancellationError || (error as? SocketError)?.code == .closed)
            if !isCut {
                logger?.warning("connection handler failed", metadata: [
                    LogKey.connection: "\(id)", LogKey.error: "\(error)",
                ])
                onConnectionError?(error, id)
            }
        }
        try? connection.close()
        let change = state.withLock { state -> Flare? in
            state.connections[id] = nil
            return state.deadline != nil && state.connections.isEmpty ? state.takeChange() : nil
        }
        change?.fire()
    }
}

/// What a connection's handler can learn from its server.
public struct ConnectionContext: Sendable {
    /// The connection's number, counted from 1 in the order of acceptance.
    public let id: Int
    let shutdownBegan: Flare

    /// Whether the server has begun to shut down: a protocol with sessions
    /// can finish the current request and say goodbye.
    public var isShuttingDown: Bool { shutdownBegan.isFired }

    /// Returns once the server begins to shut down (at once if it has), or
    /// once the task is cancelled.
    public func waitUntilShuttingDown() async { await shutdownBegan.wait() }
}

/// Misuse of an ``AsyncServer``.
public enum AsyncServerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// ``AsyncServer/run()`` was called a second time: a server runs once.
    case alreadyRun

    /// One line, for people.
    public var description: String {
        switch self {
        case .alreadyRun: "AsyncServer.run() was called a second time: a server runs once"
        }
    }
}
