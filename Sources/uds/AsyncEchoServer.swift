import UDSKit

extension EchoServer {
    /// Serves stream connections on the shared event loop: every connection is
    /// a child task that runs on the loop's thread, so readiness, reads and
    /// writes never change thread. An idle connection holds no buffer: it
    /// waits for readability, then reads into the loop's scratch buffer and
    /// writes straight back from it; only bytes the peer cannot take yet are
    /// copied aside.
    func serveAsync(_ listener: AsyncStreamListener, transcript: Transcript) async {
        let loop = EventLoop.shared
        let chunk = self.chunk
        let showPeer = self.showPeer
        // With the global executor, a task's code runs on Swift's thread pool and
        // the scratch buffer cannot be borrowed: each wake-up is a thread hop.
        let preference: (any TaskExecutor)? = executor == .loop ? loop : nil
        await withTaskExecutorPreference(preference) {
            await withDiscardingTaskGroup { group in
                transcript.say("waiting for a connection")
                var nextID = 0
                while true {
                    let connection: AsyncStreamSocket
                    let peer: UnixAddress
                    do {
                        (connection, peer) = try await listener.accept()
                    } catch let error as SocketError {
                        if ShutdownSignals.received.load(ordering: .acquiring) || error.code == .closed { return }
                        guard let pause = Self.pauseAfterAcceptFailure(error) else {
                            report(error)
                            return
                        }
                        try? await Task.sleep(for: pause)
                        continue
                    } catch {
                        return  // Cancelled.
                    }
                    nextID += 1
                    let id = nextID
                    transcript.opened(id)
                    group.addTask {
                        await echo(connection, peer: peer, id: id, chunk: chunk, showPeer: showPeer, loop: loop, transcript: transcript)
                    }
                }
            }
        }
    }
}

private func echo(
    _ connection: AsyncStreamSocket, peer: UnixAddress, id: Int, chunk: Int, showPeer: Bool,
    loop: EventLoop, transcript: Transcript
) async {
    defer {
        try? connection.close()
        transcript.closed(id)
    }
    // An echo server has no use for descriptors a client sends: plain recv.
    connection.keepsIncomingDescriptors = false
    transcript.say("connection from \(peer.classicText)", client: id)
    if showPeer {
        let credentials = try? connection.peerCredentials()
        transcript.say("peer \(credentials.map(describe) ?? "credentials unavailable")", client: id)
    }
    do {
        while true {
            try await connection.readable()
            var unsent: [UInt8] = []
            let count: Int? = try withBuffer(loop: loop, size: chunk) { (scratch) throws(SocketError) in
                guard let count = try connection.tryRead(into: scratch) else { return nil }
                let data = UnsafeRawBufferPointer(rebasing: scratch[..<count])
                transcript.say("received \(pythonBytesLiteral(data))", client: id)
                guard count > 0 else { return 0 }
                transcript.say("sending data back to the client", client: id)
                let written = try connection.tryWrite(data) ?? 0
                if written < count { unsent = Array(data[written...]) }
                return count
            }
            if count == 0 {
                transcript.say("no data from \(peer.classicText)", client: id)
                return
            }
            // The peer is not reading as fast as it writes: wait for it, holding
            // only what it has not taken yet.
            if !unsent.isEmpty { try await connection.writeAll(unsent) }
        }
    } catch {
        if !ShutdownSignals.received.load(ordering: .acquiring) { report(error) }
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
