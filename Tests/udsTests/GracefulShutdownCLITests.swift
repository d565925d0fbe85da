#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds echo-server`'s graceful shutdown: a signal stops accepting at once,
/// clients connected then may finish for up to --grace, a second signal
/// insists; and `--log-level`.
@Suite("CLI graceful shutdown", .timeLimit(.minutes(3)))
struct GracefulShutdownCLITests {
    /// A bound for what must end rather than hang, on a loaded 2-core machine.
    static let endsRatherThanHangs = Duration.seconds(60)

    /// Every way the server serves connections.
    static let variants: [ServerVariant] = IOModel.allCases.map {
        ServerVariant(type: .stream, options: $0.options, description: "stream \($0)")
    } + [ServerVariant(type: .seqpacket, options: [], description: "seqpacket --io async"),
         ServerVariant(type: .seqpacket, options: ["--io", "threads"], description: "seqpacket --io threads")]

    private func startServer(_ box: Sandbox, _ variant: ServerVariant, _ options: [String]) async throws -> Child {
        try await box.startEchoServer("./echo.sock", type: variant.type, variant.options + options, quiet: true)
    }

    @Test("SIGTERM mid-conversation: the client still gets its echo, new connects fail, the file is gone, exit 0",
          arguments: variants)
    func clientMidConversationFinishes(variant: ServerVariant) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        // A grace period no test waits for: the server must end when its client does.
        let server = try await startServer(box, variant, ["--grace", "3600"])
        let client = try box.spawn(
            "client", try Tools.python(),
            [try Tools.peer("graceful_client.py"), "./echo.sock", variant.type.rawValue, "converse"], withInput: true)
        try await client.waitForStdout("ready") { splitLines($0).contains("ready") }

        server.signal(SIGTERM)
        // Stops accepting at once: the socket file goes before any client has left.
        #expect(await poll(timeout: Self.endsRatherThanHangs) { fileType(box.resolve("echo.sock")) == nil },
                "the socket file is still there: \(server.transcript)")
        #expect(server.isRunning, "the server did not wait for its client")

        try client.write("go on\n")
        #expect(try await client.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == ["echo first", "ready", "echo second", "new connect: refused", "end"],
                "\(client.transcript)")
        let started = ContinuousClock.now
        #expect(try await server.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(server.transcript)")
        #expect(ContinuousClock.now - started < Self.endsRatherThanHangs)
        #expect(server.stderr.text == "", "a clean shutdown prints no error: \(server.transcript)")
        #expect(box.entries() == [])
    }

    @Test("an idle client is closed once --grace has passed, then the server exits 0", arguments: variants)
    func idleClientIsCutAfterGrace(variant: ServerVariant) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await startServer(box, variant, ["--grace", "0.5"])
        let client = try box.python("graceful_client.py", ["./echo.sock", variant.type.rawValue, "idle"])
        try await client.waitForStdout("ready") { splitLines($0).contains("ready") }

        let signalled = ContinuousClock.now
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(server.transcript)")
        #expect(ContinuousClock.now - signalled >= .milliseconds(500), "the client was cut before --grace passed")
        #expect(try await client.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines.last == "closed by the server", "\(client.transcript)")
        #expect(server.stderr.text == "", "\(server.transcript)")
        #expect(box.entries() == [])
    }

    @Test("a second SIGTERM exits at once, whatever --grace says", arguments: variants)
    func secondSignalExitsAtOnce(variant: ServerVariant) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await startServer(box, variant, ["--grace", "3600"])
        let client = try box.python("graceful_client.py", ["./echo.sock", variant.type.rawValue, "idle"])
        try await client.waitForStdout("ready") { splitLines($0).contains("ready") }

        server.signal(SIGTERM)
        #expect(await poll(timeout: Self.endsRatherThanHangs) { fileType(box.resolve("echo.sock")) == nil })
        #expect(server.isRunning, "the first signal did not wait for the client")
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(server.transcript)")
        #expect(try await client.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(client.transcript)")
        #expect(box.entries() == [])
    }

    @Test("--log-level info logs refused peers and the shutdown, one line each", arguments: ["async", "threads", "handlers"])
    func logLevelInfo(io: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try box.uds(["echo-server", "--allow-uid", "4242", "--io", io, "--log-level", "info", "--quiet"])
        try await box.waitUntilReady(server, address: "./uds_socket", type: .stream)
        // The readiness probe, from this process, is the first refused peer.
        let probe = "uds: notice: refused a connection: the access policy does not admit the peer"
            + " peer.gid=\(getgid()) peer.pid=\(getpid()) peer.uid=\(getuid()) socket="
        try await server.waitForStderr("the probe's refusal in the log") { splitLines($0).contains { $0.hasPrefix(probe) } }

        let client = try await box.run(try box.uds(["echo-client", "--timeout", "5"]))
        #expect(client.termination == .exited(1), "\(client.transcript)")
        let refusal = "uds: notice: refused a connection: the access policy does not admit the peer"
            + " peer.gid=\(getgid()) peer.pid=\(client.pid) peer.uid=\(getuid()) socket="
        try await server.waitForStderr("the client's refusal in the log") { splitLines($0).contains { $0.hasPrefix(refusal) } }
        // The existing one-line report stays as it was.
        #expect(server.stderr.lines.contains { $0.hasPrefix("uds: refused a connection from pid=\(client.pid) ") })

        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(server.transcript)")
        let lines = server.stderr.lines
        #expect(lines.contains { $0.hasPrefix("uds: info: shutting down: no longer accepting connections=0 ") }, "\(server.transcript)")
        #expect(lines.last == "uds: info: server stopped", "\(server.transcript)")
        // Nothing else: no line per connection or message.
        #expect(lines.count == 6, "\(server.transcript)")
    }

    @Test("without --log-level nothing is logged, and --log-level takes only known levels")
    func noLogByDefault() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", [], quiet: true)
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: Self.endsRatherThanHangs) == .exited(0), "\(server.transcript)")
        #expect(server.stderr.text == "")

        let bogus = try await box.run(try box.uds(["echo-server", "--log-level", "loud"]))
        #expect(bogus.termination == .exited(64), "\(bogus.transcript)")
        let negative = try await box.run(try box.uds(["echo-server", "--grace", "-1"]))
        #expect(negative.termination == .exited(64), "\(negative.transcript)")
        #expect(negative.stderr.lines == ["uds: --grace -1 is out of range: 0 to 86400 seconds (24 hours)"])
    }
}
