#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds relay` between two Unix sockets, spliced and copied through the
/// buffer, and `--idle-timeout`.
@Suite("uds relay: splice and idle timeout", .timeLimit(.minutes(2)))
struct RelayIdleSpliceCLITests {
    static let size = 16 << 20

    @Test("Unix to Unix: 16 MiB each way verified, with half-close, spliced and not", arguments: [false, true])
    func unixToUnix(noSplice: Bool) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "unix-listen:./front.sock", "./svc.sock", "--once", "-v"] + (noSplice ? ["--no-splice"] : []))
        _ = try await relay.listeningEndpoint()
        let client = try await onThread { [box] in try TestSocket.connect(unix: box.resolve("front.sock")) }
        guard let server = try await onThread({ try upstream.accept(timeout: .seconds(10)) }) else {
            throw SetupFailure("the relay did not connect upstream.\n\(relay.transcript)")
        }
        let size = Self.size
        let pattern = try await onThread { Pattern.shared }
        let clientSends = Background {
            try pattern.send(size, from: 0, over: client)
            try client.shutdownWrite()
        }
        // The server answers only after reading everything: half-close must carry.
        let serverReceives = Background { try server.readVerifying(pattern, offset: 0) }
        #expect(try await serverReceives.value() == size, "client to server")
        try await clientSends.value()
        let serverSends = Background {
            try pattern.send(size, from: 12_345, over: server)
            try server.shutdownWrite()
        }
        let clientReceives = Background { try client.readVerifying(pattern, offset: 12_345) }
        #expect(try await clientReceives.value() == size, "server to client")
        try await serverSends.value()
        client.close()
        server.close()
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
        #expect(relay.stderr.lines.contains("uds: connection 1 closed: \(size) bytes forward, \(size) bytes back"),
            "\(relay.transcript)")
    }

    @Test("--idle-timeout closes a quiet connection, and traffic either way keeps it open")
    func idleTimeout() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let upstream = try TestSocket.listen(unix: box.resolve("svc.sock"))
        let relay = try box.uds(["relay", "unix-listen:./front.sock", "./svc.sock", "--idle-timeout", "2", "-v"])
        _ = try await relay.listeningEndpoint()
        // Connect, accept and three seconds of a byte every 200 ms, alternating
        // directions: longer than the timeout, and never idle for it (a stall
        // of 1.8 s is tolerated). All on one thread of its own, with no hop
        // through busy test tasks: the relay's clock runs from its connect on.
        let (client, server, echoed, quiet) = try await onThread { [box] () -> (TestSocket, TestSocket, Bool, Duration) in
            let client = try TestSocket.connect(unix: box.resolve("front.sock"))
            guard let server = try upstream.accept(timeout: .seconds(10)) else {
                throw SetupFailure("the relay did not connect upstream")
            }
            for round in 0..<15 {
                let (from, to, byte) = round % 2 == 0 ? (client, server, "x") : (server, client, "y")
                try from.write(byte)
                guard try to.read(upTo: 1) == Array(byte.utf8) else { return (client, server, false, .zero) }
                Thread.sleep(forTimeInterval: 0.2)
            }
            // Then quiet: the end of the stream comes after the timeout, not before.
            let started = ContinuousClock.now
            guard try client.readToEnd() == [] else { return (client, server, false, .zero) }
            return (client, server, true, ContinuousClock.now - started)
        }
        #expect(echoed)
        #expect(quiet >= .milliseconds(1500), "closed \(quiet) after the last byte")
        #expect(try await onThread { try server.readToEnd() } == [], "\(relay.transcript)")
        try await relay.waitForStderr("the idle line") { $0.contains("uds: connection 1: no byte either way for 2.0 s; closed") }
        #expect(relay.isRunning, "a listening relay goes on after one connection idled")
        client.close()
        server.close()
    }

    @Test("--idle-timeout 0 is a usage error")
    func idleTimeoutZero() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let relay = try await box.runUDS(["relay", "stdio", "./x.sock", "--idle-timeout", "0"], input: [])
        #expect(relay.termination == .exited(64), "\(relay.transcript)")
    }
}
