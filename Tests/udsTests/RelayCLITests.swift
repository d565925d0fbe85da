#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds relay` between Unix sockets, TCP on the loopback addresses, and
/// standard I/O. The test holds both outer ends itself, so each direction is
/// checked on its own, byte for byte.
@Suite("uds relay", .timeLimit(.minutes(3)))
struct RelayCLITests {
    static let size = 64 << 20

    /// Sends `size` bytes each way at once between `client` and `server`
    /// (different stretches of the pattern), each side half-closing after its
    /// last byte, and checks every byte and the end of each stream.
    private func transferBothWays(client: TestSocket, server: TestSocket, size: Int = size) async throws {
        // Made on first use (64 MiB): not on one of Swift concurrency's threads.
        let pattern = try await onThread { Pattern.shared }
        let clientSends = Background {
            try pattern.send(size, from: 0, over: client)
            try client.shutdownWrite()
        }
        let serverSends = Background {
            try pattern.send(size, from: 7_777_777, over: server)
            try server.shutdownWrite()
        }
        let serverReceives = Background { try server.readVerifying(pattern, offset: 0) }
        let clientReceives = Background { try client.readVerifying(pattern, offset: 7_777_777) }
        #expect(try await serverReceives.value() == size, "client to server")
        #expect(try await clientReceives.value() == size, "server to client")
        try await clientSends.value()
        try await serverSends.value()
    }

    private func accept(_ listener: TestSocket, _ relay: Child) async throws -> TestSocket {
        guard let accepted = try await onThread({ try listener.accept(timeout: .seconds(10)) }) else {
            throw SetupFailure("the relay did not connect upstream within 10s.\n\(relay.transcript)")
        }
        return accepted
    }

    @Test("tcp-listen to a Unix socket: 64 MiB each way, verified byte for byte")
    func tcpToUnix() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "tcp-listen:0", "unix:./svc.sock", "--once", "--verbose"])
        let port = try await relay.listeningPort()
        #expect(try await relay.listeningEndpoint() == "tcp:127.0.0.1:\(port)", "loopback unless a host is named")

        let client = try await onThread { try TestSocket.connect(tcpPort: port) }
        let server = try await accept(upstream, relay)
        try await transferBothWays(client: client, server: server)
        client.close()
        server.close()

        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
        #expect(relay.stderr.lines.contains(
            "uds: connection 1 closed: \(Self.size) bytes forward, \(Self.size) bytes back"), "\(relay.transcript)")
    }

    @Test("unix-listen to TCP: 64 MiB each way, verified byte for byte; the socket file is removed")
    func unixToTCP() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let (upstream, port) = try TestSocket.listenTCP()
        let relay = try box.uds(["relay", "unix-listen:./front.sock", "tcp:127.0.0.1:\(port)", "--once", "-v"])
        #expect(try await relay.listeningEndpoint() == "./front.sock")
        #expect(fileType(box.resolve("front.sock")) == "s")

        let client = try await onThread { [box] in try TestSocket.connect(unix: box.resolve("front.sock")) }
        let server = try await accept(upstream, relay)
        try await transferBothWays(client: client, server: server)
        client.close()
        server.close()

        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
        #expect(relay.stderr.lines.contains(
            "uds: connection 1 closed: \(Self.size) bytes forward, \(Self.size) bytes back"), "\(relay.transcript)")
        #expect(fileType(box.resolve("front.sock")) == nil, "the relay's socket file is left behind")
    }

    @Test("half-close travels through the relay, either side first (over IPv6 loopback)")
    func halfClose() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "tcp-listen:[::1]:0", "./svc.sock"])
        let port = try await relay.listeningPort()
        #expect(try await relay.listeningEndpoint() == "tcp:[::1]:\(port)")

        // The client finishes first: the server reads its end of stream, and
        // can still answer.
        let client = try await onThread { try TestSocket.connect(tcpPort: port, ipv6: true) }
        let server = try await accept(upstream, relay)
        let (request, answer) = try await onThread {
            try client.write("ping")
            try client.shutdownWrite()
            let request = try server.readToEnd()
            try server.write("pong, after your end of stream")
            try server.shutdownWrite()
            return (request, try client.readToEnd())
        }
        #expect(request == Array("ping".utf8))
        #expect(answer == Array("pong, after your end of stream".utf8))
        client.close()
        server.close()

        // The server finishes first.
        let second = try await onThread { try TestSocket.connect(tcpPort: port, ipv6: true) }
        let secondServer = try await accept(upstream, relay)
        let (greeting, reply) = try await onThread {
            try secondServer.write("hello, and that is all")
            try secondServer.shutdownWrite()
            let greeting = try second.readToEnd()
            try second.write("still here")
            try second.shutdownWrite()
            return (greeting, try secondServer.readToEnd())
        }
        #expect(greeting == Array("hello, and that is all".utf8))
        #expect(reply == Array("still here".utf8))
        second.close()
        secondServer.close()

        #expect(relay.isRunning)
        relay.signal(SIGTERM)
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
        #expect(relay.stderr.lines.count == 1, "only the listening line:\n\(relay.transcript)")
    }

    @Test("a side that does not read holds the other back: nothing is buffered without bound")
    func backPressure() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "tcp-listen:0", "unix:./svc.sock"])
        let port = try await relay.listeningPort()
        let client = try await onThread { try TestSocket.connect(tcpPort: port) }
        let server = try await accept(upstream, relay)

        // Write until the relay stops taking data for a whole second.
        client.setTimeouts(.seconds(1))
        let pattern = try await onThread { Pattern.shared }
        let accepted = try await onThread { () -> Int in
            var total = 0
            try pattern.bytes.withUnsafeBytes { all in
                while total < all.count {
                    let chunk = min(65536, all.count - total)
                    let written = send(client.fd, all.baseAddress! + total, chunk, CInt(MSG_NOSIGNAL))
                    if written > 0 {
                        total += written
                    } else if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                        return
                    } else if written < 0 && errno != EINTR {
                        throw SocketFailure("send")
                    }
                }
            }
            return total
        }
        // Socket buffers (a few MiB on loopback TCP) and one 64 KiB relay buffer.
        #expect(accepted < 32 << 20, "the relay took \(accepted) bytes nobody read")
        #expect(accepted > 0)

        // Everything it took arrives, in order, once the server reads.
        client.setTimeouts(socketCallTimeout)
        try client.shutdownWrite()
        #expect(try await onThread { try server.readVerifying(pattern, offset: 0) } == accepted)
        client.close()
        server.close()
        relay.signal(SIGTERM)
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
    }

    @Test("--max-conns 1: a second connection waits until the first is done")
    func maxConnections() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "tcp-listen:0", "unix:./svc.sock", "--max-conns", "1"])
        let port = try await relay.listeningPort()

        let first = try await onThread { try TestSocket.connect(tcpPort: port) }
        let firstServer = try await accept(upstream, relay)
        let one = try await onThread {
            try first.write("one")
            return try firstServer.read()
        }
        #expect(one == Array("one".utf8))
        let second = try await onThread { try TestSocket.connect(tcpPort: port) }
        try second.write("two")
        let early = try await onThread { try upstream.accept(timeout: .milliseconds(500)) }
        #expect(early == nil, "a second connection was relayed while the first was open")

        first.close()
        firstServer.close()
        let secondServer = try await accept(upstream, relay)
        #expect(try await onThread { try secondServer.read() } == Array("two".utf8))
        second.close()
        secondServer.close()
        relay.signal(SIGTERM)
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
    }

    @Test("connections are relayed independently and at once")
    func independentConnections() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "tcp-listen:0", "unix:./svc.sock"])
        let port = try await relay.listeningPort()

        var clients: [TestSocket] = []
        var servers: [TestSocket] = []
        for _ in 0..<3 {
            clients.append(try await onThread { try TestSocket.connect(tcpPort: port) })
            servers.append(try await accept(upstream, relay))
        }
        // All three are open at once; each server answers what its client said.
        for (index, client) in clients.enumerated() { try client.write("client \(index)") }
        let heard = try await onThread { [servers] in try servers.map { String(decoding: try $0.read(), as: UTF8.self) } }
        #expect(Set(heard) == ["client 0", "client 1", "client 2"])
        for (server, line) in zip(servers, heard) { try server.write(line.uppercased()) }
        let answers = try await onThread { [clients] in try clients.map { String(decoding: try $0.read(), as: UTF8.self) } }
        #expect(answers == ["CLIENT 0", "CLIENT 1", "CLIENT 2"])
        (clients + servers).forEach { $0.close() }
        relay.signal(SIGTERM)
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
    }

    @Test("when TO cannot be reached, the connection is closed and reported, and the relay goes on")
    func unreachableTarget() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let relay = try box.uds(["relay", "tcp-listen:0", "./missing.sock"])
        let port = try await relay.listeningPort()
        for _ in 0..<2 {
            let client = try await onThread { try TestSocket.connect(tcpPort: port) }
            #expect(try await onThread { try client.readToEnd() } == [])
            client.close()
        }
        try await relay.waitForStderr("two connect errors") { text in
            splitLines(text).filter {
                $0 == "uds: connect(./missing.sock): no such file or directory (no socket at this path)"
            }.count == 2
        }
        #expect(relay.isRunning)
        relay.signal(SIGTERM)
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
    }

    @Test("stdio to a Unix socket: input goes up, the answer comes out, and the relay ends")
    func standardIO() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "stdio", "unix:./svc.sock"], withInput: true)
        let server = try await accept(upstream, relay)
        try relay.write("to the server\n")
        relay.closeInput()
        let request = try await onThread {
            let request = try server.readToEnd()
            try server.write("to standard output\n")
            server.close()
            return request
        }
        #expect(request == Array("to the server\n".utf8))
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
        #expect(relay.stdout.text == "to standard output\n")
        #expect(relay.stderr.text == "")
    }

    @Test("bad endpoints are refused with one line")
    func badEndpoints() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let twoListeners = try await box.runUDS(["relay", "tcp-listen:0", "tcp-listen:0"])
        #expect(twoListeners.termination == .exited(64), "\(twoListeners.transcript)")
        #expect(twoListeners.stderr.lines == ["uds: tcp-listen:0: TO cannot listen; name an endpoint to connect to, or stdio"])

        let twoStdio = try await box.runUDS(["relay", "stdio", "stdio"])
        #expect(twoStdio.termination == .exited(64), "\(twoStdio.transcript)")

        let badPort = try await box.runUDS(["relay", "tcp-listen:99999", "./x.sock"])
        #expect(badPort.termination == .exited(1), "\(badPort.transcript)")
        #expect(badPort.stderr.lines == [
            "uds: address(tcp-listen:99999): the port must be a number from 0 to 65535, not \"99999\""
        ])

        let ipv6 = try await box.runUDS(["relay", "tcp:::1:80", "./x.sock"])
        #expect(ipv6.termination == .exited(1), "\(ipv6.transcript)")
        #expect(ipv6.stderr.text.contains("brackets"), "\(ipv6.transcript)")

        let refused = try await box.runUDS(["relay", "unix:./nothing.sock", "stdio"])
        #expect(refused.termination == .exited(1), "\(refused.transcript)")
        #expect(refused.stderr.lines == ["uds: connect(./nothing.sock): no such file or directory (no socket at this path)"])
    }
}
