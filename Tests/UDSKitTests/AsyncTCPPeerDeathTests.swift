import Foundation
import Glibc
import Testing
import UDSKit

/// An async TCP connection whose peer, a Python process, is killed in the
/// middle of a stream: what it sent arrives whole, what was being written to
/// it fails with the reset, and nothing hangs. (The same for Unix sockets is
/// covered by the CLI's early-leavers tests.)
@Suite("Async TCP peers that die mid-stream")
struct AsyncTCPPeerDeathTests {
    /// Connects to the port, sends as much of the pattern as the kernel takes
    /// without blocking (its send queue full, so bytes are still in flight when
    /// it dies), prints how many, and sleeps until killed. Reads nothing.
    static let flooder = """
        import socket, sys, time
        sock = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
        sock.setblocking(False)
        pattern = bytes(i % 251 for i in range(1 << 16))
        sent = 0
        while True:
            try:
                sent += sock.send(pattern[sent % 251:])
            except BlockingIOError:
                break
        print(sent, flush=True)
        time.sleep(600)
        """

    /// Connects, prints `connected`, reads nothing and sleeps until killed.
    static let sleeper = """
        import socket, sys, time
        sock = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
        print('connected', flush=True)
        time.sleep(600)
        """

    @Test func everyByteAKilledPeerSentArrivesThenTheEnd() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, _, peer, connection) = try await acceptedPeer("flooder", script: Self.flooder, in: directory)
            defer {
                try? connection.close()
                try? listener.close()
            }
            let sentText = try await lineOf(peer)
            let sent = try #require(Int(sentText), "\(peer.transcript)")
            #expect(sent > 0, "\(peer.transcript)")

            // Killed with its send queue full: the kernel still delivers it, then the end.
            peer.process.signal(SIGKILL)
            #expect(try peer.waitForExit() == 128 + SIGKILL)

            var received: [UInt8] = []
            while true {
                let chunk = try await connection.read(upTo: 1 << 16, timeout: endsRatherThanHangs)
                if chunk.isEmpty { break }
                received += chunk
            }
            #expect(received.count == sent, "got \(received.count) of \(sent) bytes")
            let mismatch = received.indices.first { received[$0] != UInt8($0 % 251) }
            #expect(mismatch == nil, "byte \(mismatch ?? -1) differs from what the peer sent")
        }
    }

    @Test func aWriteWaitingOnAKilledPeerFailsWithTheResetAndTheListenerServesOn() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, port, peer, connection) = try await acceptedPeer("sleeper", script: Self.sleeper, in: directory)
            defer {
                try? connection.close()
                try? listener.close()
            }
            #expect(try await lineOf(peer) == "connected")

            // More than every buffer between the two can hold: the write must
            // be waiting for room when the peer dies with unread bytes, and
            // its kernel answers with a reset.
            let writing = Task {
                try await connection.writeAll(patternBytes(count: 64 << 20, seed: 9), timeout: endsRatherThanHangs)
            }
            try await waitUntilTheSendQueueIsFull(connection)
            peer.process.signal(SIGKILL)
            #expect(try peer.waitForExit() == 128 + SIGKILL)

            let failure = await #expect(throws: SocketError.self) { try await writing.value }
            #expect(failure?.errno == .connectionReset || failure?.errno == .brokenPipe, "\(String(describing: failure))")
            #expect(failure?.operation == "write", "\(String(describing: failure))")

            // The listener is unaffected: the next peer is served.
            let next = try await AsyncStreamSocket.connect(to: .tcp(host: "127.0.0.1", port: port), timeout: endsRatherThanHangs)
            defer { try? next.close() }
            let (accepted, _) = try await listener.accept(timeout: endsRatherThanHangs)
            defer { try? accepted.close() }
            try await next.writeAll(Array("after".utf8))
            #expect(try await accepted.read(upTo: 16, timeout: endsRatherThanHangs) == Array("after".utf8))
        }
    }

    /// A TCP listener on a free loopback port, `script` started with the port
    /// as its argument, and the connection it made.
    private func acceptedPeer(
        _ name: String, script: String, in directory: TemporaryDirectory
    ) async throws -> (AsyncStreamListener, UInt16, PythonPeer, AsyncStreamSocket) {
        let listener = try AsyncStreamListener.bind(to: Endpoint.tcp(host: "127.0.0.1", port: 0))
        do {
            guard case .tcp(_, let port) = try listener.localEndpoint().kind else {
                throw PythonPeer.Failed(description: "a TCP listener without a TCP endpoint")
            }
            let peer = try PythonPeer(name, script: script, arguments: ["\(port)"], in: directory)
            let (connection, _) = try await listener.accept(timeout: endsRatherThanHangs)
            return (listener, port, peer, connection)
        } catch {
            try? listener.close()
            throw error
        }
    }

    /// The first line the peer prints (it fails the test if the peer ends first).
    private func lineOf(_ peer: PythonPeer) async throws -> String {
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while ContinuousClock.now < deadline {
            if let line = peer.output.split(separator: "\n").first { return String(line) }
            if !peer.process.isRunning { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw PythonPeer.Failed(description: "no line from the peer.\n\(peer.transcript)")
    }

    /// Waits until the kernel holds unsent bytes for `connection` and its
    /// queue stops growing: the writer is then waiting for the peer.
    private func waitUntilTheSendQueueIsFull(_ connection: AsyncStreamSocket) async throws {
        var previous: CInt = -1
        var steady = 0
        let deadline = ContinuousClock.now + endsRatherThanHangs
        while ContinuousClock.now < deadline {
            var queued: CInt = 0
            guard ioctl(connection.descriptor.rawValue, UInt(TIOCOUTQ), &queued) == 0 else {
                throw POSIXFailure(call: "ioctl(TIOCOUTQ)", errno: errno)
            }
            steady = queued > 0 && queued == previous ? steady + 1 : 0
            if steady >= 5 { return }
            previous = queued
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("the send queue never filled")
    }
}
