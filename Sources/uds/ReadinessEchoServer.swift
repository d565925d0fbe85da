import Foundation
import Logging
import Synchronization
import UDSKit

extension EchoServer {
    /// Serves stream connections with readiness handlers (`--io handlers`):
    /// no task per connection, the loop calls each connection's handler at
    /// every edge, and it reads into the loop's scratch buffer and writes
    /// straight back, as a C epoll server does. Only bytes a slow peer has not
    /// taken yet are held.
    func serveWithHandlers(_ listener: AsyncStreamListener, transcript: Transcript, logger: Logger?) async throws {
        let chunk = self.chunk
        let showPeer = self.showPeer
        let nextID = Mutex(0)
        let open = OpenConnections()
        let grace = self.grace.duration
        ShutdownSignals.install({ _ in
            try? listener.close()
            // Not on the signal thread, which must stay free for a second signal.
            Thread.detachNewThread {
                open.drain(within: grace, logger: logger)
                ShutdownSignals.exitProcess(0)
            }
        }, onSecond: { _ in ShutdownSignals.exitProcess(0) })
        transcript.say("waiting for a connection")
        listener.setReadinessHandler { _ in
            while true {
                let accepted: (connection: AsyncStreamSocket, peer: Endpoint)?
                do throws(SocketError) {
                    accepted = try listener.tryAccept()
                } catch {
                    if !ShutdownSignals.received.load(ordering: .acquiring) && error.code != .closed { transcript.report(error) }
                    return
                }
                guard let (connection, endpoint) = accepted else { return }
                let peer = endpoint.unixAddress ?? .unnamed
                let id = nextID.withLock { id in
                    id += 1
                    return id
                }
                transcript.opened(id)
                let session = EchoSession(
                    connection: connection, peer: peer, id: id, chunk: chunk, transcript: transcript, open: open)
                open.opened(id) { try? connection.close() }
                transcript.connected(
        peer, client: id,
        identity: showPeer ? { PeerIdentity(credentials: try? connection.peerCredentials(), process: try? connection.peerProcess()) } : nil)
                // The handler is set on the connection's own loop thread.
                if connection.eventLoop.inEventLoop {
                    session.start()
                } else {
                    Task(executorPreference: connection.eventLoop) { session.start() }
                }
            }
        }
        // The handlers do the work; this task only keeps the command running
        // until a signal's shutdown ends the process.
        while true { try await listener.eventLoop.sleep(for: .seconds(3600)) }
    }
}

/// One connection served by its readiness handler, on its loop's thread only.
private final class EchoSession: @unchecked Sendable {
    // @unchecked: every member is touched on the connection's loop thread only.
    let connection: AsyncStreamSocket
    let loop: EventLoop
    let peer: UnixAddress
    let id: Int
    let chunk: Int
    let transcript: Transcript
    let open: OpenConnections
    // Unchecked: touched on the loop thread only, and a class's `var` is
    // otherwise checked for exclusive access at run time at every event.
    /// What the peer has not taken yet.
    @exclusivity(unchecked) private var unsent: [UInt8] = []
    @exclusivity(unchecked) private var done = false

    init(connection: AsyncStreamSocket, peer: UnixAddress, id: Int, chunk: Int, transcript: Transcript, open: OpenConnections) {
        self.open = open
        self.connection = connection
        loop = connection.eventLoop
        self.peer = peer
        self.id = id
        self.chunk = chunk
        self.transcript = transcript
    }

    func start() {
        // The handler keeps the session alive; finishing removes it.
        connection.setReadinessHandler { [self] _ in serve() }
    }

    private func serve() {
        guard !done else { return }
        do {
            // A slow peer first takes what it left; until it has, read nothing more.
            if !unsent.isEmpty {
                let written = try unsent.withUnsafeBytes { try connection.tryWrite($0) } ?? 0
                unsent.removeFirst(written)
                if !unsent.isEmpty { return }
            }
            while true {
                let outcome = try loop.withScratchBuffer(minimumSize: chunk) { (scratch) throws(SocketError) -> Bool in
                    guard let count = try connection.tryRead(into: scratch) else { return false }
                    let data = UnsafeRawBufferPointer(rebasing: scratch[..<count])
                    transcript.say("received \(pythonBytesLiteral(data))", client: id)
                    guard count > 0 else {
                        transcript.say("no data from \(peer.classicText)", client: id)
                        finish()
                        return false
                    }
                    transcript.say("sending data back to the client", client: id)
                    let written = try connection.tryWrite(data) ?? 0
                    if written < count {
                        unsent = Array(data[written...])
                        return false
                    }
                    return true
                }
                if !outcome { return }
            }
        } catch {
            if !ShutdownSignals.received.load(ordering: .acquiring) { transcript.report(error) }
            finish()
        }
    }

    private func finish() {
        guard !done else { return }
        done = true
        connection.setReadinessHandler(nil)
        try? connection.close()
        transcript.closed(id)
        open.closed(id)
    }
}
