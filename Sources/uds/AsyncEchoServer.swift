import Logging
import UDSKit

extension EchoServer {
    /// Serves stream connections on the event loops: every connection is
    /// a child task that runs on its loop's thread, so readiness, reads and
    /// writes never change thread. An idle connection holds no buffer: it
    /// waits for readability, then reads into the loop's scratch buffer and
    /// writes straight back from it; only bytes the peer cannot take yet are
    /// copied aside.
    func serveAsync(_ listener: AsyncStreamListener, transcript: Transcript, logger: Logger?) async throws {
        let showPeer = self.showPeer
        // Stream peers are endpoints; this server is a Unix one. Each handler
        // is a closure literal of the server's own type, not one converted
        // from another (a conversion is a thunk: two more frames held by
        // every idle connection's task).
        let server: AsyncStreamServer
        if let format = FrameOptions.format(frame, maxFrame: maxFrame) {
            server = AsyncStreamServer(listener: listener, logger: logger) { connection, endpoint, context in
                transcript.opened(context.id)
                await echoFrames(
                    connection, format: format, peer: endpoint.unixAddress ?? .unnamed, id: context.id, showPeer: showPeer,
                    transcript: transcript)
            }
        } else {
            let echo = AsyncEcho(chunk: chunk, showPeer: showPeer, transcript: transcript)
            server =
                if executor == .global {
                    AsyncStreamServer(listener: listener, logger: logger, handler: onGlobalExecutor(echo.serve))
                } else {
                    AsyncStreamServer(listener: listener, logger: logger) { connection, endpoint, context in
                        await echo.serve(connection, endpoint, context)
                    }
                }
        }
        try await serveGracefully(server, transcript: transcript)
    }

    /// Serves seqpacket connections on the shared event loop, one message at a time.
    func serveAsync(_ listener: AsyncSeqpacketListener, transcript: Transcript, logger: Logger?) async throws {
        let echo = AsyncEcho(chunk: chunk, showPeer: showPeer, transcript: transcript)
        // A closure literal of the server's own type, as for streams.
        let server =
            if executor == .global {
                AsyncSeqpacketServer(listener: listener, logger: logger, handler: onGlobalExecutor(echo.serve))
            } else {
                AsyncSeqpacketServer(listener: listener, logger: logger) { connection, peer, context in
                    await echo.serve(connection, peer, context)
                }
            }
        try await serveGracefully(server, transcript: transcript)
    }

    /// Runs `server` until SIGINT or SIGTERM has shut it down: it stops
    /// accepting (removing the socket file) at once, and closes the clients
    /// still connected after --grace; a second signal exits at once.
    private func serveGracefully<Listener>(_ server: AsyncServer<Listener>, transcript: Transcript) async throws {
        let grace = self.grace.duration
        ShutdownSignals.install({ _ in server.shutdown(gracePeriod: grace) }, onSecond: { _ in ShutdownSignals.exitProcess(0) })
        transcript.say("waiting for a connection")
        try await server.run()
    }

    /// Serves datagrams on the shared event loop.
    func serveAsync(_ socket: AsyncDatagramSocket, transcript: Transcript) async throws {
        transcript.say("waiting for a message")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let receipt: ReceivedMessage
            do {
                receipt = try await socket.receive(into: buffer)
            } catch let error as SocketError where error.code == .closed {
                return
            }
            let message = UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count])
            guard let sender = replyAddress(for: message, receipt, transcript: transcript) else { continue }
            do {
                try await socket.send(message, to: sender)
            } catch {
                transcript.report(error)  // The client went away; keep serving the others.
            }
        }
    }
}

/// `handler` on Swift's thread pool, for --executor global (a thread hop per
/// wake-up, to measure what that costs); without it the server runs each
/// connection on its loop.
private func onGlobalExecutor<Connection, Peer>(
    _ handler: @escaping @Sendable (Connection, Peer, ConnectionContext) async throws -> Void
) -> @Sendable (Connection, Peer, ConnectionContext) async throws -> Void {
    { connection, peer, context in
        try await withTaskExecutorPreference(globalConcurrentExecutor) { try await handler(connection, peer, context) }
    }
}

/// Echoes one seqpacket connection, message by message.
private func echo(
    _ connection: AsyncSeqpacketSocket, peer: UnixAddress, id: Int, chunk: Int, showPeer: Bool, transcript: Transcript
) async {
    defer {
        try? connection.close()
        transcript.closed(id)
    }
    connection.keepsIncomingDescriptors = false
    transcript.connected(
        peer, client: id,
        identity: showPeer ? { PeerIdentity(credentials: try? connection.peerCredentials(), process: try? connection.peerProcess()) } : nil)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 1)
    defer { buffer.deallocate() }
    do {
        while true {
            let receipt = try await connection.receive(into: buffer)
            let data = UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count])
            transcript.say("received \(pythonBytesLiteral(data))", client: id)
            if receipt.count == 0 && !receipt.isTruncated {
                transcript.say("no data from \(peer.classicText)", client: id)
                return
            }
            if receipt.isTruncated {
                transcript.report(SocketError("recvmsg", address: peer.description, code: .messageTruncated(length: nil, capacity: chunk)))
            }
            transcript.say("sending data back to the client", client: id)
            try await connection.send(data)
        }
    } catch {
        if !ShutdownSignals.received.load(ordering: .acquiring) { transcript.report(error) }
    }
}

/// How `uds echo-server` echoes a connection on the async API.
private struct AsyncEcho: Sendable {
    let chunk: Int
    let showPeer: Bool
    let transcript: Transcript

    /// Echoes a seqpacket connection, message by message.
    func serve(_ connection: AsyncSeqpacketSocket, _ peer: UnixAddress, _ context: ConnectionContext) async {
        transcript.opened(context.id)
        await echo(connection, peer: peer, id: context.id, chunk: chunk, showPeer: showPeer, transcript: transcript)
    }

    /// Echoes a stream connection until its end or a failure, and says which.
    ///
    /// One frame for the whole connection: an idle connection's task holds
    /// it while waiting, and the runtime gives each task one slab of about a
    /// kilobyte for its frames before it needs a second.
    @inline(never)
    func serve(_ connection: AsyncStreamSocket, _ endpoint: Endpoint, _ context: ConnectionContext) async {
        let id = context.id
        transcript.opened(id)
        // An echo server has no use for descriptors a client sends: plain recv.
        connection.keepsIncomingDescriptors = false
        announce(connection, peer: endpoint.unixAddress ?? .unnamed, id: id, showPeer: showPeer, transcript: transcript)
        let loop = connection.eventLoop
        var failure: (any Error)?
        // Out of the loop: a new empty array per echo is one more release per round trip.
        var unsent: [UInt8] = []
        do {
            while true {
                try await connection.readable()
                guard let count = try echoReady(connection, loop: loop, id: id, chunk: chunk, unsent: &unsent, transcript: transcript)
                else { continue }
                if count == 0 { break }
                // The peer is not reading as fast as it writes: wait for it,
                // holding only what it has not taken yet.
                if !unsent.isEmpty {
                    try await connection.writeAll(unsent)
                    unsent = []
                }
            }
        } catch {
            failure = error
        }
        finish(connection, peer: endpoint.unixAddress ?? .unnamed, id: id, failure: failure, transcript: transcript)
    }
}

/// Says how the connection ended, and closes it.
@inline(never)
private func finish(_ connection: AsyncStreamSocket, peer: UnixAddress, id: Int, failure: (any Error)?, transcript: Transcript) {
    if let failure {
        if !ShutdownSignals.received.load(ordering: .acquiring) { transcript.report(failure) }
    } else {
        transcript.say("no data from \(peer.classicText)", client: id)
    }
    try? connection.close()
    transcript.closed(id)
}

private func announce(_ connection: AsyncStreamSocket, peer: UnixAddress, id: Int, showPeer: Bool, transcript: Transcript) {
    transcript.connected(
        peer, client: id,
        identity: showPeer ? { PeerIdentity(credentials: try? connection.peerCredentials(), process: try? connection.peerProcess()) } : nil)
}

/// Reads what is there into the loop's scratch buffer and writes it straight
/// back: the count read (0 at the end), `nil` if nothing was there after all;
/// what the peer could not take yet is left in `unsent`.
@inline(never)
private func echoReady(
    _ connection: AsyncStreamSocket, loop: EventLoop, id: Int, chunk: Int, unsent: inout [UInt8], transcript: Transcript
) throws(SocketError) -> Int? {
    try withBuffer(loop: loop, size: chunk) { (scratch) throws(SocketError) in
        guard let count = try connection.tryRead(into: scratch) else { return nil }
        let data = UnsafeRawBufferPointer(rebasing: scratch[..<count])
        transcript.say("received \(pythonBytesLiteral(data))", client: id)
        guard count > 0 else { return 0 }
        transcript.say("sending data back to the client", client: id)
        let written = try connection.tryWrite(data) ?? 0
        if written < count { unsent = Array(data[written...]) }
        return count
    }
}

/// The loop's scratch buffer when on the loop thread; otherwise a fresh one.
private func withBuffer<R>(
    loop: EventLoop, size: Int, _ body: (UnsafeMutableRawBufferPointer) throws(SocketError) -> R
) throws(SocketError) -> R {
    if loop.inEventLoop { return try loop.withScratchBuffer(minimumSize: size, body) }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    defer { buffer.deallocate() }
    return try body(buffer)
}
