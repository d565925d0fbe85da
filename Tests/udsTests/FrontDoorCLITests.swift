#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// What every command shares: `--version`, help that reads at 80 columns,
/// one duration syntax, one-line usage errors, and one exit rule for SIGINT
/// and SIGTERM.
@Suite("uds front door", .timeLimit(.minutes(3)))
struct FrontDoorCLITests {

    static let subcommands = [
        "echo-server", "echo-client", "send-fd", "recv-fd", "connect", "listen", "send", "recv",
        "relay", "ls", "probe", "stat", "bench",
    ]

    /// The fewest arguments each command needs to get past parsing.
    static func required(_ command: String) -> [String] {
        switch command {
        case "echo-server", "echo-client", "ls": []
        case "send-fd": ["./fd.sock", "file"]
        case "relay": ["./a.sock", "./b.sock"]
        default: ["./x.sock"]
        }
    }

    @Test("uds --version prints the version and exits 0")
    func version() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let run = try await box.runUDS(["--version"])
        #expect(run.termination == .exited(0), "\(run.transcript)")
        let printed = run.stdout.text.trimmingCharacters(in: .newlines)
        #expect(printed.split(separator: ".").count == 3 && printed.allSatisfy { $0.isNumber || $0 == "." },
                "not a version: \(printed)")
        #expect(run.stderr.text == "")
    }

    // MARK: help at 80 columns

    @Test("help fits 80 columns with no orphan words", arguments: [""] + subcommands)
    func helpWrapsAt80Columns(command: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let arguments = ["COLUMNS=80", try Tools.uds(), "help"] + (command.isEmpty ? [] : [command])
        let help = try await box.run(try box.spawn("help", "/usr/bin/env", arguments))
        #expect(help.termination == .exited(0), "\(help.transcript)")
        let lines = help.stdout.lines
        #expect(lines.count > 5, "\(help.transcript)")
        for (index, line) in lines.enumerated() {
            #expect(line.count <= 80, "longer than 80 columns: \(line)")
            // A wrapped continuation of an option's or a command's help that
            // holds one or two words is an orphan.
            let words = line.split(separator: " ")
            guard index > 0, line.hasPrefix(String(repeating: " ", count: 10)), !words.isEmpty,
                  !lines[index - 1].trimmingCharacters(in: .whitespaces).isEmpty,
                  !lines[index - 1].trimmingCharacters(in: .whitespaces).hasPrefix("uds "),
                  !line.trimmingCharacters(in: .whitespaces).hasPrefix("-"),
                  !line.trimmingCharacters(in: .whitespaces).hasPrefix("uds ")
            else { continue }
            #expect(words.count >= 3, "an orphan line after \"\(lines[index - 1])\": \(line)")
        }
    }

    @Test("--type lists only the socket types a command accepts",
          arguments: [("send", ["dgram", "seqpacket"]), ("recv", ["dgram", "seqpacket"]),
                      ("listen", ["stream", "seqpacket"]), ("connect", ["stream", "dgram", "seqpacket"]),
                      ("echo-server", ["stream", "dgram", "seqpacket"])])
    func typeValues(command: String, accepted: [String]) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let help = try await box.runUDS(["help", command])
        let text = help.stdout.text.replacingOccurrences(of: "\n", with: " ")
            .split(separator: " ").joined(separator: " ")
        #expect(text.contains("(values: \(accepted.joined(separator: ", "));"), "\(help.transcript)")
        for refused in ["stream", "dgram", "seqpacket"] where !accepted.contains(refused) {
            let run = try await box.runUDS([command] + Self.required(command) + ["--type", refused])
            #expect(run.termination == .exited(64), "\(run.transcript)")
            #expect(run.stderr.lines.count == 1, "\(run.transcript)")
        }
    }

    // MARK: durations

    /// Every option that takes a duration, with what its command needs.
    static let durationOptions: [(command: [String], option: String)] = [
        (["echo-client", "./x.sock"], "--timeout"),
        (["connect", "./x.sock"], "--timeout"),
        (["connect", "./x.sock"], "--linger"),
        (["listen", "./x.sock"], "--linger"),
        (["send", "./x.sock"], "--timeout"),
        (["recv", "./x.sock"], "--timeout"),
        (["relay", "./a.sock", "./b.sock"], "--timeout"),
        (["probe", "./x.sock"], "--timeout"),
        (["bench", "./x.sock"], "--duration"),
        (["bench", "./x.sock"], "--warmup"),
    ]

    @Test("every duration option parses 2, 500ms, 1m30s and 1.5s alike, and refuses the same text",
          arguments: durationOptions.indices)
    func durationsParseAlike(index: Int) async throws {
        let (command, option) = Self.durationOptions[index]
        let box = try Sandbox()
        defer { box.cleanup() }
        // Negative values parse, then fail the range check by name: proof that
        // each form was read as a duration, without running the command.
        for text in ["-2", "-500ms", "-1m30s", "-1.5s", "-1h"] {
            let run = try await box.runUDS(command + [option, text])
            #expect(run.termination == .exited(64), "\(option) \(text): \(run.transcript)")
            #expect(run.stderr.lines.count == 1 && run.stderr.text.hasPrefix("uds: \(option) \(text) is out of range"),
                    "\(option) \(text): \(run.transcript)")
        }
        for text in ["2x", "1s30m", "ms", "1m30", "1..5s"] {
            let run = try await box.runUDS(command + [option, text])
            #expect(run.termination == .exited(64), "\(option) \(text): \(run.transcript)")
            #expect(run.stderr.lines.count == 1 && run.stderr.text.contains("'\(text)'")
                    && run.stderr.text.contains(option), "\(option) \(text): \(run.transcript)")
        }
        #expect(box.entries() == [], "nothing was bound")
    }

    @Test("echo-client --timeout takes a unit", arguments: ["2s", "1m30s", "500ms"])
    func echoClientTimeoutUnits(timeout: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        // Nobody listens: the connect fails (1), so the value was accepted (not 64).
        let run = try await box.runUDS(["echo-client", "./nobody.sock", "--timeout", timeout])
        #expect(run.termination == .exited(1), "\(run.transcript)")
        #expect(run.stderr.text.contains("connect("), "\(run.transcript)")
    }

    @Test("recv says the unit when it times out", arguments: [("0.3", "0.3s"), ("300ms", "300ms"), ("0.3s", "0.3s")])
    func recvTimeoutUnit(given: String, shown: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let run = try await box.runUDS(["recv", "./t.dgram", "--count", "1", "--timeout", given])
        #expect(run.termination == .exited(1), "\(run.transcript)")
        #expect(run.stderr.lines.last == "uds: recv(./t.dgram): timed out after \(shown) with no message (received 0 of 1)",
                "\(run.transcript)")
    }

    // MARK: usage errors

    @Test("an unknown option is one line that names it", arguments: [""] + subcommands)
    func unknownOption(command: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let arguments = command.isEmpty ? ["--no-such-option"] : [command] + Self.required(command) + ["--no-such-option"]
        let run = try await box.runUDS(arguments)
        #expect(run.termination == .exited(64), "\(run.transcript)")
        #expect(run.stderr.lines.count == 1, "\(run.transcript)")
        #expect(run.stderr.text.hasPrefix("uds: "), "\(run.transcript)")
        #expect(run.stderr.text.contains("'--no-such-option'"), "\(run.transcript)")
        #expect(run.stdout.text == "")
        #expect(box.entries() == [], "nothing was bound")
    }

    @Test("--chunk -1 says the value is out of range, not that it is missing",
          arguments: ["echo-server", "echo-client"])
    func negativeChunk(command: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let run = try await box.runUDS([command, "--chunk", "-1"])
        #expect(run.termination == .exited(64), "\(run.transcript)")
        #expect(run.stderr.lines == ["uds: --chunk -1 is out of range: 1 to 67108864 bytes (64 MiB)"], "\(run.transcript)")
    }

    // MARK: SIGINT and SIGTERM

    /// A command blocked in its work, and the files it made.
    enum Blocked: String, CaseIterable, CustomStringConvertible {
        case echoServer = "echo-server"
        case echoClient = "echo-client"
        case receiveDescriptors = "recv-fd"
        case connect
        case connectDatagram = "connect --type dgram"
        case listen
        case send = "send --bind"
        case receive = "recv"
        case relayListening = "relay unix-listen:"
        case relayStdio = "relay stdio"
        case bench

        var description: String { rawValue }
    }

    @Test("SIGINT and SIGTERM end every command with status 0, its socket files removed",
          arguments: Blocked.allCases, ["SIGINT", "SIGTERM"])
    func shutdownSignal(command: Blocked, signal: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        // A peer that accepts and never answers; what it receives shows that
        // the command under test is past its start-up.
        let peer = try box.uds(["listen", "./peer.sock", "--keep-open"], withInput: true)
        try await peer.waitForStderr("listening") { $0.contains("listening on") }
        let child: Child
        switch command {
        case .echoServer:
            child = try box.uds(["echo-server", "./own.sock", "--quiet"])
            try await box.waitUntilReady(child, address: "./own.sock", type: .stream)
        case .echoClient:
            child = try box.uds(["echo-client", "./peer.sock", "--message", "ping", "--timeout", "1h"])
            try await peer.waitForStdout("the client's message") { $0.contains("ping") }
        case .receiveDescriptors:
            child = try box.uds(["recv-fd", "./own.sock"])
            try await waitForSocketFile(child, box, "own.sock")
        case .connect:
            child = try box.uds(["connect", "./peer.sock"], withInput: true)
            try child.write("ping\n")
            try await peer.waitForStdout("the client's line") { $0.contains("ping") }
        case .connectDatagram:
            let receiver = try box.uds(["recv", "./target.dgram"])
            try await waitForSocketFile(receiver, box, "target.dgram")
            child = try box.uds(["connect", "./target.dgram", "--type", "dgram", "--bind", "./own.sock"], withInput: true)
            try await waitForSocketFile(child, box, "own.sock")
        case .listen:
            child = try box.uds(["listen", "./own.sock"], withInput: true)
            try await waitForSocketFile(child, box, "own.sock")
        case .send:
            child = try box.uds(["send", "./nobody.dgram", "--bind", "./own.sock"], withInput: true)
            try await waitForSocketFile(child, box, "own.sock")
        case .receive:
            child = try box.uds(["recv", "./own.sock"])
            try await waitForSocketFile(child, box, "own.sock")
        case .relayListening:
            child = try box.uds(["relay", "unix-listen:./own.sock", "./peer.sock"])
            try await waitForSocketFile(child, box, "own.sock")
        case .relayStdio:
            child = try box.uds(["relay", "stdio", "./peer.sock"], withInput: true)
            try child.write("ping\n")
            try await peer.waitForStdout("the relayed line") { $0.contains("ping") }
        case .bench:
            let server = try await box.startEchoServer("./echo.sock", quiet: true)
            _ = server
            child = try box.uds(["bench", "./echo.sock", "--duration", "1h", "--warmup", "0"])
            try await child.waitForStderr("progress") { $0.contains("round trips") }
        }
        child.signal(signal == "SIGINT" ? SIGINT : SIGTERM)
        let termination = try await child.waitForExit(timeout: .seconds(30))
        #expect(termination == .exited(0), "\(child.transcript)")
        #expect(!child.stderr.text.contains("error"), "\(child.transcript)")
        #expect(fileType(box.resolve("own.sock")) == nil, "its socket file is still there: \(box.entries())")
    }

    @Test("a signal during a connect that waits (the listener's backlog is full) ends it at once with 0",
          arguments: ["SIGINT", "SIGTERM"])
    func shutdownDuringConnect(signal: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        // A listener that never accepts, its backlog filled: a blocking
        // Unix stream connect then waits.
        let full = try box.spawn("full listener", try Tools.python(), ["-c", """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX); s.bind("./full.sock"); s.listen(0)
            held = []
            for _ in range(4):
                c = socket.socket(socket.AF_UNIX); c.setblocking(False)
                try: c.connect("./full.sock")
                except BlockingIOError: break
                held.append(c)
            print("full", flush=True)
            time.sleep(120)
            """])
        try await full.waitForLine("full")
        let client = try box.uds(["connect", "./full.sock"], withInput: true)
        // Its socket exists: past start-up, and in (or about to be in) connect.
        let connecting = await poll { !client.isRunning || holdsSocket(client.pid) }
        #expect(connecting && client.isRunning, "\(client.transcript)")
        client.signal(signal == "SIGINT" ? SIGINT : SIGTERM)
        #expect(try await client.waitForExit(timeout: .seconds(30)) == .exited(0), "\(client.transcript)")
    }

    /// Whether process `pid` has a socket open (Linux `/proc/PID/fd`).
    private func holdsSocket(_ pid: Int32) -> Bool {
        let directory = "/proc/\(pid)/fd"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return false }
        return entries.contains { entry in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + entry))?.hasPrefix("socket:") == true
        }
    }

    private func waitForSocketFile(_ child: Child, _ box: Sandbox, _ name: String) async throws {
        let appeared = await poll { fileType(box.resolve(name)) == "s" || !child.isRunning }
        guard appeared, child.isRunning else {
            throw SetupFailure("\(name) did not appear.\n\(child.transcript)")
        }
    }
}
