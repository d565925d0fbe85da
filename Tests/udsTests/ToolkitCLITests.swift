#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds connect`, `listen`, `send` and `recv` against each other and against
/// socat, netcat-openbsd and Python; `--help`, completions.
@Suite("uds connect, listen, send, recv", .timeLimit(.minutes(2)))
struct ToolkitCLITests {

    // MARK: connect and listen against socat and netcat

    @Test("uds connect against a socat listener, both ways")
    func connectToSocat() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        // -t 10: after one direction ends, socat waits that long (not 0.5s)
        // for the other, so a loaded machine does not cut the exchange short.
        let socat = try box.spawn(
            "socat", try Tools.socat(), ["-d", "-d", "-t", "10", "UNIX-LISTEN:./s.sock", "STDIO"], withInput: true)
        try await socat.waitForStderr("socat listening") { $0.contains("listening on") }
        try socat.write("from socat\n")
        socat.closeInput()

        let client = try box.uds(["connect", "./s.sock"], withInput: true)
        try client.write("from uds\n")
        client.closeInput()
        try await socat.waitForStdout("the line from uds") { $0 == "from uds\n" }

        #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
        #expect(client.stdout.text == "from socat\n")
        #expect(client.stderr.text == "")
        #expect(try await socat.waitForExit() == .exited(0), "\(socat.transcript)")
    }

    @Test("uds connect against a netcat-openbsd listener, both ways")
    func connectToNetcat() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let nc = try box.spawn("nc", try Tools.netcat(), ["-v", "-N", "-lU", "./n.sock"], withInput: true)
        try await nc.waitForStderr("nc listening") { $0.contains("Listening on") }

        // netcat exits once the connection's other end has ended: it must
        // have what it sends before then.
        try nc.write("from netcat\n")
        nc.closeInput()
        let client = try box.uds(["connect", "./n.sock"], withInput: true)
        try client.write("from uds\n")
        client.closeInput()

        #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
        #expect(client.stdout.text == "from netcat\n")
        #expect(try await nc.waitForExit() == .exited(0), "\(nc.transcript)")
        #expect(nc.stdout.text == "from uds\n")
    }

    /// `uds listen` with one client, which `talk` runs; returns the listener
    /// when it has exited.
    private func listenOnce(_ box: Sandbox, client talk: () async throws -> Void) async throws -> Child {
        let listener = try box.uds(["listen", "./l.sock"], withInput: true)
        #expect(try await listener.listeningEndpoint() == "./l.sock")
        try listener.write("from uds\n")
        listener.closeInput()
        try await talk()
        #expect(try await listener.waitForExit() == .exited(0), "\(listener.transcript)")
        #expect(fileType(box.resolve("l.sock")) == nil, "uds listen left its socket file behind")
        return listener
    }

    @Test("uds listen with a socat client, both ways")
    func listenForSocat() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        var socat: Child?
        let listener = try await listenOnce(box) {
            let client = try box.spawn("socat", try Tools.socat(), ["-t", "10", "-", "UNIX-CONNECT:./l.sock"], withInput: true)
            socat = client
            try client.write("from socat\n")
            client.closeInput()
            #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
        }
        #expect(listener.stdout.text == "from socat\n")
        #expect(socat?.stdout.text == "from uds\n")
    }

    @Test("uds listen with a netcat-openbsd client, both ways")
    func listenForNetcat() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        var nc: Child?
        let listener = try await listenOnce(box) {
            let client = try box.spawn("nc", try Tools.netcat(), ["-N", "-U", "./l.sock"], withInput: true)
            nc = client
            try client.write("from netcat\n")
            client.closeInput()
            #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
        }
        #expect(listener.stdout.text == "from netcat\n")
        #expect(nc?.stdout.text == "from uds\n")
    }

    @Test("uds connect and uds listen carry every byte value, both ways at once")
    func binarySafe() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let toClient = Array((0..<2048).flatMap { _ in (0...255).map(UInt8.init) })
        let toServer = try await onThread { Array(Pattern.shared.bytes[0..<300_000]) }
        let listener = try box.uds(["listen", "./b.sock"], withInput: true)
        _ = try await listener.listeningEndpoint()
        let client = try box.uds(["connect", "./b.sock"], withInput: true)
        try listener.write(toClient)
        listener.closeInput()
        try client.write(toServer)
        client.closeInput()
        #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
        #expect(try await listener.waitForExit() == .exited(0), "\(listener.transcript)")
        #expect(client.stdout.bytes == toClient)
        #expect(listener.stdout.bytes == toServer)
    }

    @Test("uds listen and connect over TCP on the loopback address")
    func overTCP() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let listener = try box.uds(["listen", "tcp:0"], withInput: true)
        let port = try await listener.listeningPort()
        try listener.write("over tcp, from the listener\n")
        listener.closeInput()
        let client = try await box.runUDS(["connect", "tcp:127.0.0.1:\(port)"], input: Array("over tcp, from the client\n".utf8))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.text == "over tcp, from the listener\n")
        #expect(try await listener.waitForExit() == .exited(0), "\(listener.transcript)")
        #expect(listener.stdout.text == "over tcp, from the client\n")
    }

    @Test("uds listen --keep-open serves one client after another until SIGTERM, then removes its file")
    func keepOpen() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let listener = try box.uds(["listen", "./k.sock", "--keep-open"])
        _ = try await listener.listeningEndpoint()
        for index in 1...3 {
            let client = try await box.runUDS(["connect", "./k.sock"], input: Array("client \(index)\n".utf8))
            #expect(client.termination == .exited(0), "\(client.transcript)")
            try await listener.waitForLine("client \(index)")
            #expect(fileType(box.resolve("k.sock")) == "s")
        }
        #expect(listener.stdout.lines == ["client 1", "client 2", "client 3"])
        listener.signal(SIGTERM)
        #expect(try await listener.waitForExit() == .exited(0), "\(listener.transcript)")
        #expect(fileType(box.resolve("k.sock")) == nil)
    }

    @Test("seqpacket: each line is one message, each message one line")
    func seqpacketLines() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let listener = try box.uds(["listen", "./q.sock", "--type", "seqpacket"], withInput: true)
        _ = try await listener.listeningEndpoint()
        try listener.write("first answer\nsecond answer\n")
        listener.closeInput()
        let client = try await box.runUDS(
            ["connect", "./q.sock", "--type", "seqpacket"], input: Array("one\ntwo words\nno newline".utf8))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == ["first answer", "second answer"])
        #expect(try await listener.waitForExit() == .exited(0), "\(listener.transcript)")
        #expect(listener.stdout.lines == ["one", "two words", "no newline"])
    }

    @Test("uds connect --type dgram: each line a datagram, answers printed (against the Python datagram server)")
    func datagramConnect() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try box.python("dgram_server.py", ["./d.sock", "2"])
        try await server.waitForLine("waiting for a message")
        let client = try await box.runUDS(
            ["connect", "./d.sock", "--type", "dgram", "--linger", "2"], input: Array("hello\nagain\n".utf8))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == ["hello", "again"])
        #expect(try await server.waitForExit() == .exited(0), "\(server.transcript)")
        // The client bound an address of its own (an abstract name) to be answered at.
        #expect(server.stdout.text.contains("received b'hello' from b'\\x00uds-connect-"), "\(server.transcript)")
    }

    // MARK: Errors

    @Test("connect and listen errors are one line naming the address and the cause")
    func errors() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let missing = try await box.runUDS(["connect", "./nope.sock"])
        #expect(missing.termination == .exited(1))
        #expect(missing.stderr.lines == ["uds: connect(./nope.sock): no such file or directory (no socket at this path)"])

        let (probe, port) = try TestSocket.listenTCP()
        probe.close()
        let refused = try await box.runUDS(["connect", "tcp:127.0.0.1:\(port)"])
        #expect(refused.termination == .exited(1))
        #expect(refused.stderr.lines == ["uds: connect(tcp:127.0.0.1:\(port)): connection refused (nothing is listening there)"])

        try "precious\n".write(toFile: box.resolve("plain"), atomically: false, encoding: .utf8)
        let notASocket = try await box.runUDS(["listen", "./plain"])
        #expect(notASocket.termination == .exited(1))
        #expect(notASocket.stderr.lines == [
            "uds: bind(./plain): the path exists and is a regular file, not a socket; refusing to replace it"
        ])
        #expect(try String(contentsOfFile: box.resolve("plain"), encoding: .utf8) == "precious\n")

        let bad = try await box.runUDS(["connect", "tcp:localhost:http"])
        #expect(bad.termination == .exited(1))
        #expect(bad.stderr.lines.count == 1)
        #expect(bad.stderr.text.hasPrefix("uds: address(tcp:localhost:http): the port must be a number"))
    }

    @Test("uds listen replaces a stale socket file, with a notice")
    func listenReplacesStale() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try await box.makeStaleSocket("./old.sock")
        let listener = try box.uds(["listen", "./old.sock"])
        _ = try await listener.listeningEndpoint()
        #expect(listener.stderr.lines.first == "uds: removed stale socket file ./old.sock (nobody was listening)")
        listener.signal(SIGTERM)
        #expect(try await listener.waitForExit() == .exited(0))
        #expect(fileType(box.resolve("old.sock")) == nil)
    }

    // MARK: send and recv

    @Test("uds send and uds recv: datagrams with their senders")
    func datagrams() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        // The timeout only keeps a lost datagram from hanging the test. It
        // was 10 s, and in a full parallel run this test's own task could be
        // kept waiting longer than that between starting the receiver and
        // sending: the receiver had timed out and removed its file, and the
        // senders found none (the receiver was already a zombie).
        let receiver = try box.uds(["recv", "./r.dgram", "--count", "3", "--timeout", "60"])
        #expect(try await receiver.listeningEndpoint() == "./r.dgram")
        let whereabouts = "receiver's directory \(symbolicLink("/proc/\(receiver.pid)/cwd")), sandbox \(box.path): \(box.entries())"

        let first = try await box.runUDS(["send", "./r.dgram", "one", "two words"])
        #expect(first.termination == .exited(0), "\(first.transcript)\n\(whereabouts)")
        let second = try await box.runUDS(["send", "./r.dgram", "it's\tthree", "--bind", "./me.dgram"])
        #expect(second.termination == .exited(0), "\(second.transcript)")
        #expect(fileType(box.resolve("me.dgram")) == nil, "send left its --bind file behind")

        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        #expect(receiver.stdout.lines == [
            "received b'one' from (unnamed)",
            "received b'two words' from (unnamed)",
            "received b\"it's\\tthree\" from ./me.dgram",
        ])
        #expect(fileType(box.resolve("r.dgram")) == nil, "recv left its socket file behind")
    }

    @Test("uds send reads lines from standard input; uds recv --raw prints the bytes alone")
    func rawLines() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let name = "@" + uniqueName("raw")
        let receiver = try box.uds(["recv", name, "--count", "2", "--raw"])
        _ = try await receiver.listeningEndpoint()
        let sender = try await box.runUDS(["send", name], input: Array("alpha\nbeta\n".utf8))
        #expect(sender.termination == .exited(0), "\(sender.transcript)")
        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        #expect(receiver.stdout.text == "alpha\nbeta\n")
    }

    @Test("uds recv --timeout: an error with --count, the normal end without")
    func receiveTimeout() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let counted = try await box.runUDS(["recv", "./t.dgram", "--count", "1", "--timeout", "300ms"])
        #expect(counted.termination == .exited(1), "\(counted.transcript)")
        #expect(counted.stderr.lines.last == "uds: recv(./t.dgram): timed out after 300ms with no message (received 0 of 1)")
        let open = try await box.runUDS(["recv", "./t.dgram", "--timeout", "0.3"])
        #expect(open.termination == .exited(0), "\(open.transcript)")
        #expect(fileType(box.resolve("t.dgram")) == nil)
    }

    @Test("uds send and recv over seqpacket, with the sender's bound address and credentials")
    func seqpacketMessages() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let receiver = try box.uds(["recv", "./q.sock", "--type", "seqpacket", "--count", "2", "--credentials"])
        _ = try await receiver.listeningEndpoint()
        let sender = try box.uds(["send", "./q.sock", "--type", "seqpacket", "first", "second", "--bind", "./from.sock"])
        #expect(try await sender.waitForExit() == .exited(0), "\(sender.transcript)")
        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        let lines = receiver.stdout.lines
        #expect(lines.count == 2)
        #expect(lines.first?.hasPrefix("received b'first' from ./from.sock pid=\(sender.pid) uid=\(getuid())") == true, "\(lines)")
        #expect(lines.last?.hasPrefix("received b'second' from ./from.sock pid=\(sender.pid)") == true, "\(lines)")
    }

    @Test("datagrams between uds and socat, both ways")
    func datagramsWithSocat() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let receiver = try box.uds(["recv", "./u.dgram", "--count", "1"])
        _ = try await receiver.listeningEndpoint()
        let socatSends = try box.spawn("socat", try Tools.socat(), ["-", "UNIX-SENDTO:./u.dgram"], withInput: true)
        try socatSends.write("from socat\n")
        socatSends.closeInput()
        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        #expect(receiver.stdout.lines == ["received b'from socat\\n' from (unnamed)"])
        _ = try await socatSends.waitForExit()

        let socatReceives = try box.spawn("socat", try Tools.socat(), ["-u", "UNIX-RECV:./s.dgram", "STDOUT"])
        let appeared = await poll { fileType(box.resolve("s.dgram")) == "s" }
        #expect(appeared, "\(socatReceives.transcript)")
        let sender = try await box.runUDS(["send", "./s.dgram", "from uds"])
        #expect(sender.termination == .exited(0), "\(sender.transcript)")
        try await socatReceives.waitForStdout("the datagram") { $0 == "from uds" }
    }

    // MARK: Help and completions

    static let toolkitCommands = ["connect", "listen", "send", "recv", "relay", "ls", "probe", "stat"]

    @Test("every command's --help has examples", arguments: toolkitCommands)
    func help(command: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let help = try await box.runUDS([command, "--help"])
        #expect(help.termination == .exited(0), "\(help.transcript)")
        #expect(help.stdout.text.contains("Examples:"), "\(help.stdout.text)")
        #expect(help.stdout.text.contains("uds \(command)"), "\(help.stdout.text)")
    }

    @Test("uds probe --help documents every exit status")
    func probeExitStatuses() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let help = try await box.runUDS(["probe", "--help"])
        let text = help.stdout.text
        for line in ["0  listening", "1  error", "2  stale", "3  not a socket", "4  no permission", "5  nothing there"] {
            #expect(text.contains(line), "missing \"\(line)\" in:\n\(text)")
        }
    }

    @Test("uds --generate-completion-script bash works and knows every subcommand")
    func completions() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let script = try await box.runUDS(["--generate-completion-script", "bash"])
        #expect(script.termination == .exited(0), "\(script.transcript)")
        let text = script.stdout.text
        #expect(text.contains("complete "), "not a bash completion script")
        for command in Self.toolkitCommands + ["echo-server", "echo-client"] {
            #expect(text.contains(command), "the completion script does not mention \(command)")
        }
        for shell in ["zsh", "fish"] {
            let other = try await box.runUDS(["--generate-completion-script", shell])
            #expect(other.termination == .exited(0), "\(other.transcript)")
            #expect(other.stdout.text.contains("relay"))
        }
    }
}

/// Where a symbolic link points (readlink(2): /proc's links have no size for
/// Foundation to go by), or the errno.
private func symbolicLink(_ path: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink(path, &buffer, buffer.count - 1)
    guard count >= 0 else { return "unreadable (errno \(errno))" }
    return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
