import Foundation
import Testing

/// `uds bench` is a measuring tool; these tests check that it measures, checks
/// what comes back, and reports failures, not how fast anything is.
@Suite("uds bench")
struct BenchCLITests {
    private func jsonObject(_ text: String) throws -> [String: Any] {
        let line = try #require(splitLines(text).last(where: { $0.hasPrefix("{") }), "no JSON line in: \(text)")
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    @Test(arguments: ["async", "threads"])
    func pingPongCountsRoundTripsAndLatency(io: String) async throws {
        let sandbox = try Sandbox()
        defer { sandbox.cleanup() }
        let server = try await sandbox.startEchoServer("b.sock", ["--io", io], quiet: true)
        let bench = try await sandbox.run(try sandbox.uds([
            "bench", "b.sock", "--connections", "3", "--size", "64", "--duration", "0.5", "--warmup", "0.1",
            "--server-pid", String(server.pid), "--json", "--quiet",
        ]))
        #expect(bench.termination == .exited(0), "\(bench.transcript)")
        let result = try jsonObject(bench.stdout.text)
        #expect(result["mode"] as? String == "ping-pong")
        #expect(result["connections"] as? Int == 3)
        let operations = try #require(result["operations"] as? Int)
        #expect(operations > 0)
        let p50 = try #require(result["p50_us"] as? Double)
        let p99 = try #require(result["p99_us"] as? Double)
        #expect(p50 > 0 && p50 <= p99)
        #expect(result["server_cpu_us_per_op"] != nil, "with --server-pid the server's CPU time is reported")
    }

    @Test func streamingChecksEveryByteBothWays() async throws {
        let sandbox = try Sandbox()
        defer { sandbox.cleanup() }
        _ = try await sandbox.startEchoServer("s.sock", quiet: true)
        let bench = try await sandbox.run(try sandbox.uds([
            "bench", "s.sock", "--mode", "stream", "--bytes", "20000000", "--write-size", "65536", "--json", "--quiet",
        ]))
        #expect(bench.termination == .exited(0), "\(bench.transcript)")
        let result = try jsonObject(bench.stdout.text)
        #expect(result["mode"] as? String == "stream")
        #expect((result["megabytes_per_second"] as? Double ?? 0) > 0)
    }

    /// A server that answers with other bytes is caught, not measured.
    @Test func aWrongEchoIsAnError() async throws {
        let sandbox = try Sandbox()
        defer { sandbox.cleanup() }
        // Echoes every byte plus one: the reply differs from the message.
        let script = """
            import socket, sys, threading
            def serve(connection):
                try:
                    while True:
                        data = connection.recv(65536)
                        if not data:
                            break
                        connection.sendall(bytes((b + 1) % 256 for b in data))
                except OSError:
                    pass
                finally:
                    connection.close()
            server = socket.socket(socket.AF_UNIX)
            server.bind(sys.argv[1])
            server.listen(8)
            while True:
                connection, _ = server.accept()
                threading.Thread(target=serve, args=(connection,), daemon=True).start()
            """
        let server = try sandbox.spawn("bad echo", try Tools.python(), ["-c", script, sandbox.resolve("bad.sock")])
        try await sandbox.waitUntilReady(server, address: "bad.sock", type: .stream)
        let bench = try await sandbox.run(try sandbox.uds([
            "bench", "bad.sock", "--size", "16", "--duration", "0.3", "--warmup", "0", "--quiet",
        ]))
        #expect(bench.termination == .exited(1), "\(bench.transcript)")
        #expect(bench.stderr.text.contains("differs"), "\(bench.transcript)")
    }
}
