#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds echo-server` and `uds echo-client` against each other, against the
/// classic Python demo, and against socat and netcat.
@Suite("Echo interop", .timeLimit(.minutes(2)))
struct EchoInteropTests {

    // MARK: a. The classic transcript on both sides

    @Test("uds echo-server --chunk 16 and uds echo-client print the classic transcripts", arguments: IOModel.allCases)
    func classicTranscripts(io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer(nil, ["--chunk", "16"] + io.options)

        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client())
        #expect(client.stderr.text == "")

        try await server.waitForLine("waiting for a connection", count: 3)
        #expect(server.isRunning)
        // The readiness probe is a client that sent nothing: its session comes first.
        #expect(server.stdout.lines
            == Classic.serverStart() + probeSession + Classic.serverSession + ["waiting for a connection"])
        #expect(server.stderr.text == "")
    }

    // MARK: b. Interop with the classic Python demo

    @Test("the classic Python client against uds echo-server --chunk 16", arguments: IOModel.allCases)
    func pythonClientAgainstUDSServer(io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer(nil, ["--chunk", "16"] + io.options)

        let client = try await box.run(try box.python("classic_client.py"))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client())
        #expect(client.stderr.text == "")

        try await server.waitForLine("waiting for a connection", count: 3)
        #expect(server.stdout.lines
            == Classic.serverStart() + probeSession + Classic.serverSession + ["waiting for a connection"])
    }

    @Test("uds echo-client against the classic Python server")
    func udsClientAgainstPythonServer() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try box.python("classic_server.py", ["./uds_socket", "once"])
        // A connect probe would be this one-connection server's only client, so
        // readiness is its "waiting for a connection" line (printed after
        // listen) and the socket file.
        try await server.waitForLine("waiting for a connection")
        #expect(fileType(box.resolve("uds_socket")) == "s")

        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client())
        #expect(client.stderr.text == "")

        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(server.stdout.lines == Classic.serverStart() + Classic.serverSession)
    }

    // MARK: c. Datagrams

    @Test("uds echo-server --type dgram answers the Python datagram client at its pid-named address")
    func pythonDatagramClientAgainstUDSServer() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.dgram", type: .dgram)

        let message = "hello, datagram: \u{e9}t\u{e9} 'quoted'"
        let client = try await box.run(try box.python("dgram_client.py", ["./echo.dgram", message]))
        let local = "./echo.dgram.py-client-\(client.pid)"
        let literal = pythonLiteral(message)
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == [
            "connecting to ./echo.dgram",
            "bound to \(local)",
            "sending \(literal)",
            "received \(literal)",
            "closing socket",
        ])
        #expect(fileType(box.resolve(local)) == nil, "the client's socket file is still there")

        try await server.waitForStdout("the reply line") { $0.contains("sending data back to") }
        #expect(server.stdout.lines == [
            "starting up on ./echo.dgram",
            "waiting for a message",
            "received \(literal) from \(local)",
            "sending data back to \(local)",
        ])
        #expect(server.stderr.text == "")
    }

    @Test("uds echo-client --type dgram against the Python datagram server")
    func udsDatagramClientAgainstPythonServer() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try box.python("dgram_server.py", ["./echo.dgram", "1"])
        try await box.waitUntilReady(server, address: "./echo.dgram", type: .dgram)

        let client = try await box.run(try box.uds(["echo-client", "./echo.dgram", "--type", "dgram"]))
        let local = "./echo.dgram.client-\(client.pid)"
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == [
            "connecting to ./echo.dgram",
            "bound to \(local)",
            "sending b'This is the message. It will be repeated.'",
            "received b'This is the message. It will be repeated.'",
            "closing socket",
        ])
        #expect(client.stderr.text == "")

        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        #expect(server.stdout.lines == [
            "starting up on ./echo.dgram",
            "waiting for a message",
            "received b'This is the message. It will be repeated.' from \(local)",
            "sending data back to \(local)",
        ])
        // Both removed their socket files: the client's own and the server's.
        #expect(box.entries() == [])
    }

    @Test("uds echo-client and echo-server over dgram and seqpacket", arguments: [SocketType.dgram, .seqpacket])
    func udsBothSides(type: SocketType) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", type: type)

        let client = try await box.run(try box.uds(["echo-client", "./echo.sock", "--type", type.rawValue,
                                                    "--message", "one whole message"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines.contains("received b'one whole message'"), "\(client.transcript)")
        #expect(client.stdout.lines.last == "closing socket")
        #expect(client.stderr.text == "")
        #expect(box.entries() == ["echo.sock"], "only the server's socket file should be left")
        #expect(server.isRunning)
    }

    // MARK: d. socat and netcat

    @Test("socat as a client gets its bytes back from uds echo-server")
    func socatClient() async throws {
        let socat = try Tools.socat()
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer("./echo.sock")

        let payload = Array("socat says hello\nsecond line\n".utf8) + [0, 1, 0x7f, 0x80, 0xfe, 0xff]
        let client = try box.spawn("socat", socat, ["-t", "2", "-", "UNIX-CONNECT:./echo.sock"], withInput: true)
        try client.write(payload)
        client.closeInput()
        #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
        #expect(client.stdout.bytes == payload)
    }

    @Test("netcat-openbsd (nc -U -N) gets its bytes back from uds echo-server")
    func netcatClient() async throws {
        let nc = try Tools.netcat()
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer("./echo.sock")

        let payload = Array("netcat says hello\n".utf8) + [0, 0xff, 0x0a]
        let client = try box.spawn("nc", nc, ["-N", "-U", "./echo.sock"], withInput: true)
        try client.write(payload)
        client.closeInput()
        #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
        #expect(client.stdout.bytes == payload)
    }

    @Test("uds echo-client --chunk 16 against socat as an echo server prints the classic transcript")
    func socatServer() async throws {
        let socat = try Tools.socat()
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try box.spawn("socat server", socat, ["UNIX-LISTEN:./uds_socket,fork", "EXEC:cat"])
        try await box.waitUntilReady(server, address: "./uds_socket", type: .stream)

        let client = try await box.run(try box.uds(["echo-client", "--chunk", "16"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client())
        #expect(client.stderr.text == "")
    }

    @Test("socat ABSTRACT-CONNECT and uds echo-client reach uds echo-server at an abstract name")
    func abstractName() async throws {
        let socat = try Tools.socat()
        let box = try Sandbox()
        defer { box.cleanup() }
        let name = uniqueName("abstract")
        let server = try await box.startEchoServer("@" + name, ["--chunk", "16"])
        #expect(server.stdout.lines.first == "starting up on @\(name)")

        let payload = Array("to an abstract name\n".utf8)
        let socatClient = try box.spawn("socat", socat, ["-t", "2", "-", "ABSTRACT-CONNECT:\(name)"], withInput: true)
        try socatClient.write(payload)
        socatClient.closeInput()
        #expect(try await socatClient.waitForExit() == .exited(0), "\(socatClient.transcript)")
        #expect(socatClient.stdout.bytes == payload)

        // Wait until socat's session is over, so the next client is alone.
        try await server.waitForLine("waiting for a connection", count: 3)
        let client = try await box.run(try box.uds(["echo-client", "@" + name]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client("@" + name))

        // An abstract name leaves nothing in the filesystem.
        #expect(box.entries() == [])
    }

    // MARK: e. Two clients at once

    @Test("two overlapping clients each get their own bytes back, and the server names them",
          arguments: IOModel.allCases)
    func twoClientsAtOnce(io: IOModel) async throws {
        try await twoClientsAtOnce(serverOptions: io.options)
    }

    /// `--executor global` runs the connection tasks on Swift's thread pool
    /// (a hop per wake-up): the same conversation must come out the same.
    @Test("--executor global: two overlapping clients, each served whole")
    func twoClientsAtOnceOnTheGlobalExecutor() async throws {
        try await twoClientsAtOnce(serverOptions: ["--executor", "global"])
    }

    @Test("--executor global: a seqpacket echo keeps the message whole")
    func seqpacketOnTheGlobalExecutor() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", type: .seqpacket, ["--executor", "global"])
        let client = try await box.run(try box.uds(["echo-client", "./echo.sock", "--type", "seqpacket",
                                                    "--message", "one whole message"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines.contains("received b'one whole message'"), "\(client.transcript)")
        #expect(client.stderr.text == "")
        #expect(server.isRunning)
    }

    private func twoClientsAtOnce(serverOptions: [String]) async throws {
        let socat = try Tools.socat()
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", serverOptions)
        let connect = ["-t", "2", "-", "UNIX-CONNECT:./echo.sock"]

        // The probe was client 1; alpha is client 2 and bravo client 3.
        let alpha = try box.spawn("socat alpha", socat, connect, withInput: true)
        try alpha.write("alpha-1\n")
        try await alpha.waitForStdout("alpha-1") { $0 == "alpha-1\n" }

        let bravo = try box.spawn("socat bravo", socat, connect, withInput: true)
        try bravo.write("bravo-1\n")
        try await bravo.waitForStdout("bravo-1") { $0 == "bravo-1\n" }

        // Both are connected now: each sends again over its open connection.
        try alpha.write("alpha-2\n")
        try bravo.write("bravo-2\n")
        try await alpha.waitForStdout("alpha-2") { $0 == "alpha-1\nalpha-2\n" }
        try await bravo.waitForStdout("bravo-2") { $0 == "bravo-1\nbravo-2\n" }

        alpha.closeInput()
        bravo.closeInput()
        #expect(try await alpha.waitForExit() == .exited(0), "\(alpha.transcript)")
        #expect(try await bravo.waitForExit() == .exited(0), "\(bravo.transcript)")
        #expect(alpha.stdout.text == "alpha-1\nalpha-2\n")
        #expect(bravo.stdout.text == "bravo-1\nbravo-2\n")

        // Once both left, the server is idle again.
        try await server.waitForStdout("both sessions ended") { text in
            let lines = splitLines(text)
            return lines.filter { $0.contains("no data from") }.count == 3
                && lines.last == "waiting for a connection"
        }
        let lines = server.stdout.lines
        // Alpha was alone when it connected and sent its first line.
        #expect(lines.contains("received b'alpha-1\\n'"))
        // While both were connected, every line names its client.
        #expect(lines.contains("[client 3] connection from "))
        #expect(lines.contains("[client 3] received b'bravo-1\\n'"))
        #expect(lines.contains("[client 2] received b'alpha-2\\n'"))
        #expect(lines.contains("[client 3] received b'bravo-2\\n'"))
        #expect(lines.contains { $0.hasPrefix("[client 2] ") })
        #expect(lines.contains { $0.hasPrefix("[client 3] ") })
        // No client's bytes were echoed under the other's name.
        #expect(!lines.contains { $0.hasPrefix("[client 2]") && $0.contains("bravo") })
        #expect(!lines.contains { $0.hasPrefix("[client 3]") && $0.contains("alpha") })
        #expect(server.stderr.text == "")
    }
}

/// Python's `repr()` of `text.encode()`, for the messages these tests send.
func pythonLiteral(_ text: String) -> String {
    let bytes = Array(text.utf8)
    let quote: Character = bytes.contains(UInt8(ascii: "'")) && !bytes.contains(UInt8(ascii: "\"")) ? "\"" : "'"
    var result = "b\(quote)"
    for byte in bytes {
        switch byte {
        case UInt8(ascii: "\\"): result += "\\\\"
        case UInt8(ascii: "\n"): result += "\\n"
        case UInt8(ascii: "\t"): result += "\\t"
        case UInt8(ascii: "\r"): result += "\\r"
        case _ where Character(Unicode.Scalar(byte)) == quote: result += "\\\(quote)"
        case 0x20..<0x7f: result.append(Character(Unicode.Scalar(byte)))
        default: result += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }
    }
    return result + String(quote)
}
