#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// How `uds` starts and stops: clean shutdown on signals, and a client with
/// nobody to talk to.
@Suite("CLI lifecycle", .timeLimit(.minutes(2)))
struct LifecycleCLITests {

    enum ShutdownSignal: String, CaseIterable, CustomStringConvertible {
        case SIGINT, SIGTERM
        var number: Int32 { self == .SIGINT ? Glibc.SIGINT : Glibc.SIGTERM }
        var description: String { rawValue }
    }

    @Test("SIGINT and SIGTERM stop the server with status 0 and remove its socket file",
          arguments: ShutdownSignal.allCases, ServerVariant.all)
    func shutdown(signal: ShutdownSignal, variant: ServerVariant) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", type: variant.type, variant.options)
        #expect(fileType(box.resolve("echo.sock")) == "s")

        server.signal(signal.number)
        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(fileType(box.resolve("echo.sock")) == nil, "the socket file is still there")
        #expect(server.stderr.text == "", "a clean shutdown prints no error")
        #expect(box.entries() == [])
    }

    @Test("a signal sent as soon as the server accepts connections still stops it cleanly",
          arguments: ShutdownSignal.allCases, ServerVariant.all)
    func shutdownRightAfterStart(signal: ShutdownSignal, variant: ServerVariant) async throws {
        // Each round signals at the first moment a connect succeeds; a signal
        // caught too late at start-up would kill the server (status by signal,
        // stale file) or be dropped (it would never exit).
        for round in 1...5 {
            let box = try Sandbox()
            defer { box.cleanup() }
            var arguments = ["echo-server", "./echo.sock", "--quiet"] + variant.options
            if variant.type != .stream { arguments += ["--type", variant.type.rawValue] }
            let server = try box.uds(arguments)
            try await box.waitUntilReady(server, address: "./echo.sock", type: variant.type)
            server.signal(signal.number)
            let termination = try await server.waitForExit(timeout: .seconds(60))
            #expect(termination == .exited(0), "round \(round): \(server.transcript)")
            #expect(box.entries() == [], "round \(round): the socket file is still there")
            if termination != .exited(0) || !box.entries().isEmpty { break }
        }
    }

    @Test("SIGINT or SIGTERM stops the server while a client is connected",
          arguments: ShutdownSignal.allCases, IOModel.allCases)
    func shutdownWithClient(signal: ShutdownSignal, io: IOModel) async throws {
        let socat = try Tools.socat()
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", io.options)

        let client = try box.spawn("socat", socat, ["-t", "2", "-", "UNIX-CONNECT:./echo.sock"], withInput: true)
        try client.write("still here\n")
        try await client.waitForStdout("its echo") { $0 == "still here\n" }

        server.signal(signal.number)
        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(fileType(box.resolve("echo.sock")) == nil, "the socket file is still there")
        #expect(server.stderr.text == "", "a clean shutdown prints no error")

        // The connection went away with the server: the client sees the end and
        // quits although its own input is still open.
        #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
    }

    /// One loop, the default, is the process's only thread: the loop runs on
    /// the main thread and reads the signals too (a second thread makes every
    /// system call dearer). It still serves, and a signal still stops it cleanly.
    @Test("on one loop the server is a single thread, and SIGTERM still stops it",
          arguments: [(SocketType.stream, IOModel.async), (.stream, .handlers), (.seqpacket, .async), (.dgram, .async)])
    func oneLoopIsOneThread(type: SocketType, io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", type: type, io.options)
        let client = try await box.run(try box.uds(["echo-client", "./echo.sock", "--type", type.rawValue, "--timeout", "5"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.pid)/task")
        #expect(threads.count == 1, "threads \(threads); \(server.transcript)")

        server.signal(SIGTERM)
        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(fileType(box.resolve("echo.sock")) == nil, "the socket file is still there")
        #expect(server.stderr.text == "", "\(server.transcript)")
    }

    /// The loop that serves is also the one that reads signals: clients that
    /// keep it busy must not keep SIGTERM from shutting the server down.
    @Test("a server kept busy by eight clients still shuts down at SIGTERM, on one thread",
          arguments: [IOModel.async, .handlers])
    func busyServerStops(io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", io.options + ["--grace", "0.5"], quiet: true)
        let clients = try box.python("busy_clients.py", ["./echo.sock", "8"])
        try await clients.waitForStdout("ready") { splitLines($0).contains("ready") }
        try await Task.sleep(for: .milliseconds(300))
        let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.pid)/task")
        #expect(threads.count == 1, "threads \(threads)")

        server.signal(SIGTERM)
        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(fileType(box.resolve("echo.sock")) == nil, "the socket file is still there")
        #expect(server.stderr.text == "", "\(server.transcript)")
        // Every echo matched until the server closed each connection.
        #expect(try await clients.waitForExit() == .exited(0), "\(clients.transcript)")
        #expect(clients.stdout.lines.last?.hasPrefix("closed ") == true, "\(clients.transcript)")
    }

    /// With --loops 2 the loops are threads of their own, and signals have
    /// their own reading thread: the server serves, and SIGTERM stops it.
    @Test("--loops 2 serves on loop threads, and SIGTERM still stops it", arguments: IOModel.allCases.filter { $0 != .threads })
    func twoLoops(io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", io.options + ["--loops", "2"])
        for _ in 0..<2 {
            let client = try await box.run(try box.uds(["echo-client", "./echo.sock", "--timeout", "5"]))
            #expect(client.termination == .exited(0), "\(client.transcript)")
        }
        let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.pid)/task")
        #expect(threads.count >= 4, "main, two loops and the signal reader: \(threads)")

        server.signal(SIGTERM)
        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(fileType(box.resolve("echo.sock")) == nil, "the socket file is still there")
        #expect(server.stderr.text == "", "\(server.transcript)")
    }

    @Test("SIGINT to a server started with the classic defaults removes ./uds_socket")
    func classicDefaultsInterrupt() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer()
        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        try await server.waitForLine("waiting for a connection", count: 3)

        server.signal(SIGINT)
        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(box.entries() == [])
    }

    @Test("echo-client with no server: status 1 and one line on stderr naming connect")
    func clientWithoutServer() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }

        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(1), "\(client.transcript)")
        #expect(client.stdout.lines == ["connecting to ./uds_socket"])
        #expect(client.stderr.lines.count == 1, "\(client.transcript)")
        #expect(client.stderr.lines.first?.hasPrefix("uds: connect(./uds_socket)") == true, "\(client.transcript)")
    }

    @Test("echo-client at a stale socket file: status 1, connection refused")
    func clientAtStaleSocket() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let script = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])"
        let python = try await box.run(try box.spawn("python bind", try Tools.python(), ["-c", script, "./uds_socket"]))
        #expect(python.termination == .exited(0), "\(python.transcript)")

        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(1), "\(client.transcript)")
        #expect(client.stderr.lines.count == 1, "\(client.transcript)")
        #expect(client.stderr.lines.first?.hasPrefix("uds: connect(./uds_socket)") == true, "\(client.transcript)")
        #expect(client.stderr.text.lowercased().contains("refused"), "\(client.transcript)")
        // The client never touches the stale file.
        #expect(fileType(box.resolve("uds_socket")) == "s")
    }

    @Test("echo-client --type dgram with no server: status 1, and its own socket file is removed")
    func datagramClientWithoutServer() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }

        let client = try await box.run(try box.uds(["echo-client", "./nobody.dgram", "--type", "dgram"]))
        #expect(client.termination == .exited(1), "\(client.transcript)")
        #expect(client.stderr.lines.count == 1, "\(client.transcript)")
        #expect(client.stderr.lines.first?.hasPrefix("uds: connect(") == true, "\(client.transcript)")
        #expect(box.entries() == [], "the client left its socket file behind")
    }
}
