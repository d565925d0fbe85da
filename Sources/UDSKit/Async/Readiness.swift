/// What one readiness edge said about a socket; see
/// ``AsyncStreamSocket/setReadinessHandler(_:)``.
public struct Readiness: Sendable, Hashable {
    /// A read (or accept) may succeed.
    public var readable: Bool
    /// A write may succeed.
    public var writable: Bool
    /// The peer will send nothing more, or an error is pending.
    public var readClosed: Bool

    /// Readiness from its parts (for calling a handler by hand, in tests).
    public init(readable: Bool, writable: Bool, readClosed: Bool) {
        self.readable = readable
        self.writable = writable
        self.readClosed = readClosed
    }

    /// As if both directions had become ready: what a handler is first called
    /// with, since an edge may have passed before it was set.
    public static let both = Readiness(readable: true, writable: true, readClosed: false)
}

// The readiness level under async/await: a handler the loop calls inline at
// each edge, with no task and no task switch. Choose it for servers that
// must hold many idle connections in little memory, or that want the last
// microseconds per message; the handler then does what a C epoll server
// does: `tryRead`/`tryWrite`/`tryAccept` until they return `nil`.
extension AsyncCore {
    /// Sets (or with `nil` removes) the handler the loop calls at every
    /// readiness edge, and calls it once at once with ``Readiness/both``.
    func setReadinessHandler(_ handler: (@Sendable (Readiness) -> Void)?) {
        registration.setReadinessHandler(handler)
        registration.runReadinessHandler(.both)
    }

    /// One accept without waiting: a connection, or `nil` if none is pending
    /// or the listener must pause (then the handler is called again after
    /// the pause, since no edge will say so).
    func tryAccept(policy: AccessPolicy) throws(SocketError) -> (SocketHandle, Endpoint)? {
        var recovery = AcceptRecovery()
        while true {
            switch try acceptOnce(policy: policy, &recovery) {
            case .accepted(let connection, let peer): return (connection, peer)
            case .retry: continue
            case .wouldBlock, .awaitConnection: return nil
            case .pause(let pause):
                let registration = self.registration
                registration.loop.schedule(LoopTimer(deadline: .now.advanced(by: pause)) { stopped in
                    if !stopped { registration.runReadinessHandler(Readiness(readable: true, writable: false, readClosed: false)) }
                })
                return nil
            }
        }
    }
}

extension AsyncSocket {
    /// Has the loop call `handler` on its thread at every readiness edge,
    /// instead of a task waiting: the readiness level, like a C epoll server
    /// (and SwiftNIO's channel handlers), for servers that hold many idle
    /// connections or count microseconds. Readiness is edge-triggered: the
    /// handler reads with `tryRead(into:)` and writes with `tryWrite(_:)`
    /// (a listener accepts with ``AsyncStreamListener/tryAccept()``) until
    /// they return `nil`, or it hears of nothing more. It is called once at
    /// once with ``Readiness/both``. Set it on the socket's ``eventLoop``
    /// thread; `nil` removes it. Tasks may still wait on the socket as well.
    public func setReadinessHandler(_ handler: (@Sendable (Readiness) -> Void)?) {
        asyncCore.setReadinessHandler(handler)
    }
}

extension AsyncStreamListener {
    /// Accepts a pending connection the access policy admits, without
    /// waiting: `nil` if none is pending. Running out of descriptors does not
    /// fail it (see ``accept(timeout:)``); while the listener pauses, the
    /// readiness handler is called again after the pause.
    public func tryAccept() throws(SocketError) -> (connection: AsyncStreamSocket, peer: Endpoint)? {
        guard let (handle, peer) = try asyncCore.tryAccept(policy: accessPolicy) else { return nil }
        return (try AsyncStreamSocket(core: AsyncCore(handle: handle, loop: connectionLoops.next())), peer)
    }
}
