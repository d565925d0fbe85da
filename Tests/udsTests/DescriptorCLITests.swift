#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds send-fd` / `uds recv-fd`, and the access control and peer reporting of
/// `uds echo-server` (--allow-uid, --allow-gid, --show-peer).
@Suite("Descriptor passing and peer credentials from the CLI", .timeLimit(.minutes(2)))
struct DescriptorCLITests {

    /// Whether a socket bound at `path` (as given to bind) is listening, by
    /// /proc/net/unix: recv-fd serves one connection, so a connect probe
    /// would use it up.
    private static func isListening(_ path: String) -> Bool {
        for line in readProcFile("/proc/net/unix").split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            // Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON = 0x10000.
            guard fields.count >= 8, fields[7] == path, let flags = Int(fields[3], radix: 16) else { continue }
            if flags & 0x10000 != 0 { return true }
        }
        return false
    }

    /// All of a /proc file, read to its end: it reports a size of 0, and
    /// `String(contentsOfFile:)` stops after the first page of it.
    private static func readProcFile(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                bytes += buffer[..<count]
            } else if count == -1 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Waits until `server` listens at `path`; fails if it exits first.
    private func waitUntilListening(_ server: Child, _ path: String) async throws {
        var exited = false
        let ready = await poll(timeout: .seconds(30)) {
            if !server.isRunning {
                exited = true
                return true
            }
            return Self.isListening(path)
        }
        if exited {
            _ = await poll(timeout: .seconds(3)) { server.stderr.isFinished }
            throw SetupFailure("\(server.name) exited (\(server.termination!)) before it listened at \(path).\n\(server.transcript)")
        }
        if !ready {
            throw SetupFailure("\(server.name) was not listening at \(path) within 30 seconds.\n\(server.transcript)")
        }
    }

    private func writeFile(_ box: Sandbox, _ name: String, _ contents: String) throws {
        try contents.write(toFile: box.resolve(name), atomically: false, encoding: .utf8)
    }

    /// The text /proc/PID/comm gives a command: its file name, cut to 15 bytes.
    private func commandName(_ path: String) -> String {
        String(((path as NSString).lastPathComponent).utf8.prefix(15))!
    }

    // MARK: send-fd and recv-fd

    @Test("recv-fd prints the files send-fd opened, in order, and names the sender")
    func sendAndReceiveTwoFiles() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try writeFile(box, "first.txt", "the first file\n")
        try writeFile(box, "second.txt", "and the second\n")
        let path = box.resolve("fd.sock")
        let receiver = try box.uds(["recv-fd", path])
        try await waitUntilListening(receiver, path)

        let sender = try await box.run(try box.uds(["send-fd", path, "first.txt", "second.txt"]))
        #expect(sender.termination == .exited(0), "\(sender.transcript)")
        #expect(sender.stdout.text == "")
        #expect(sender.stderr.lines == ["uds: sent 2 descriptor(s) to \(path)"])

        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        #expect(receiver.stdout.text == "the first file\nand the second\n")
        #expect(receiver.stderr.lines == [
            "uds: received 2 descriptor(s) from pid=\(sender.pid) uid=\(getuid()) gid=\(getgid())",
            "uds: first.txt:",
            "uds: second.txt:",
        ])
        #expect(fileType(path) == nil, "recv-fd left its socket file")
    }

    /// The receiver reads through the descriptor, not the path: a file the
    /// receiver could not open by name (it is gone) still comes through.
    @Test("recv-fd reads an open file whose name is already gone")
    func descriptorOutlivesTheName() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try writeFile(box, "doomed.txt", "read through the descriptor\n")
        let path = box.resolve("fd.sock")
        let receiver = try box.uds(["recv-fd", path])
        try await waitUntilListening(receiver, path)

        // A Python sender opens the file, unlinks it, then sends the descriptor.
        let script = """
            import os, socket, sys
            fd = os.open(sys.argv[2], os.O_RDONLY)
            os.unlink(sys.argv[2])
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sys.argv[1])
            socket.send_fds(s, [b"doomed.txt"], [fd])
            """
        let sender = try await box.run(try box.spawn("python sender", try Tools.python(), ["-c", script, path, "doomed.txt"]))
        #expect(sender.termination == .exited(0), "\(sender.transcript)")
        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        #expect(receiver.stdout.text == "read through the descriptor\n")
        #expect(receiver.stderr.lines.first == "uds: received 1 descriptor(s) from pid=\(sender.pid) uid=\(getuid()) gid=\(getgid())")
        #expect(fileType(box.resolve("doomed.txt")) == nil)
    }

    @Test("send-fd of a missing file fails with one line naming it, and connects to nobody")
    func sendMissingFile() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try writeFile(box, "present.txt", "present\n")
        let path = box.resolve("fd.sock")
        let receiver = try box.uds(["recv-fd", path])
        try await waitUntilListening(receiver, path)

        let sender = try await box.run(try box.uds(["send-fd", path, "present.txt", "no-such-file.txt"]))
        #expect(sender.termination == .exited(1), "\(sender.transcript)")
        #expect(sender.stdout.text == "")
        #expect(sender.stderr.lines.count == 1, "one error line expected:\n\(sender.transcript)")
        let line = sender.stderr.lines.first ?? ""
        #expect(line.hasPrefix("uds: "), "\(line)")
        #expect(line.contains("no-such-file.txt"), "\(line)")
        #expect(!line.contains("present.txt"), "\(line)")

        // Nothing reached the receiver: it still waits, and serves a good sender.
        try await Task.sleep(for: .milliseconds(100))
        #expect(receiver.isRunning)
        #expect(receiver.stderr.text == "")
        let good = try await box.run(try box.uds(["send-fd", path, "present.txt"]))
        #expect(good.termination == .exited(0), "\(good.transcript)")
        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        #expect(receiver.stdout.text == "present\n")
    }

    @Test("send-fd with nobody listening fails naming the address")
    func sendToNobody() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try writeFile(box, "file.txt", "x\n")
        let sender = try await box.run(try box.uds(["send-fd", box.resolve("nobody.sock"), "file.txt"]))
        #expect(sender.termination == .exited(1), "\(sender.transcript)")
        #expect(sender.stderr.lines.count == 1, "\(sender.transcript)")
        #expect(sender.stderr.text.contains("connect(\(box.resolve("nobody.sock")))"), "\(sender.transcript)")
    }

    @Test("send-fd without files is a usage error")
    func sendWithoutFiles() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let sender = try await box.run(try box.uds(["send-fd", box.resolve("fd.sock")]))
        #expect(sender.termination == .exited(64), "\(sender.transcript)")
        #expect(sender.stderr.text.lowercased().contains("files"), "\(sender.transcript)")
    }

    @Test("send-fd of 254 files fails with the 253-descriptor limit, and recv-fd gets nothing")
    func sendTooManyFiles() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try writeFile(box, "same.txt", "x\n")
        let path = box.resolve("fd.sock")
        let receiver = try box.uds(["recv-fd", path])
        try await waitUntilListening(receiver, path)
        let sender = try await box.run(try box.uds(["send-fd", path] + Array(repeating: "same.txt", count: 254)))
        #expect(sender.termination == .exited(1), "\(sender.transcript)")
        #expect(sender.stderr.lines.count == 1, "\(sender.transcript)")
        #expect(sender.stderr.text.contains("254 descriptors in one message; the limit is 253"), "\(sender.transcript)")
        // The connection was made and closed with nothing on it.
        #expect(try await receiver.waitForExit() == .exited(0), "\(receiver.transcript)")
        #expect(receiver.stdout.text == "")
        #expect(receiver.stderr.lines.first?.hasPrefix("uds: received 0 descriptor(s) from pid=\(sender.pid) ") == true, "\(receiver.transcript)")
    }

    // MARK: echo-server --show-peer, --allow-uid, --allow-gid

    /// A datagram server has no connection to refuse: rather than ignore the
    /// restriction and echo to everyone, echo-server refuses to start.
    @Test("--allow-uid, --allow-gid and --show-peer are refused with --type dgram",
          arguments: [["--allow-uid", "4242"], ["--allow-gid", "4242"], ["--show-peer"]])
    func accessOptionsNeedConnections(options: [String]) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.run(try box.uds(["echo-server", "--type", "dgram"] + options))
        #expect(server.termination == .exited(64), "\(server.transcript)")
        #expect(server.stderr.text.contains("--type stream or seqpacket"), "\(server.transcript)")
        #expect(server.stdout.text == "")
        #expect(box.entries().isEmpty, "no socket file: \(box.entries())")
    }

    @Test("--allow-uid with our uid and --show-peer: the client is served and its pid, uid, gid and command are printed",
          arguments: ["async", "threads"])
    func showPeer(io: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer(nil, ["--allow-uid", String(getuid()), "--show-peer", "--io", io])
        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client())

        try await server.waitForLine("waiting for a connection", count: 3)
        let peerLines = server.stdout.lines.filter { $0.hasPrefix("peer ") }
        let ids = "uid=\(getuid()) gid=\(getgid())"
        let ourCommand = commandName(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        #expect(peerLines == [
            "peer pid=\(getpid()) \(ids) command=\(ourCommand)",  // the readiness probe
            "peer pid=\(client.pid) \(ids) command=uds",
        ], "\(server.transcript)")
        // The peer line comes right after the connection line.
        let lines = server.stdout.lines
        if let index = lines.firstIndex(of: "peer pid=\(client.pid) \(ids) command=uds") {
            #expect(lines[index - 1] == "connection from ")
        }
        #expect(server.stderr.text == "")
    }

    @Test("a Python client's command name is python's", arguments: ["async", "threads"])
    func showPeerOfAPythonClient(io: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer(nil, ["--show-peer", "--io", io])
        let client = try await box.run(try box.python("classic_client.py"))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        try await server.waitForLine("waiting for a connection", count: 3)
        let expected = "peer pid=\(client.pid) uid=\(getuid()) gid=\(getgid()) command=\(commandName(try Tools.python()))"
        #expect(server.stdout.lines.contains(expected), "\(server.transcript)")
    }

    /// Starts an echo server that refuses everyone this test runs as, waits
    /// until its own readiness probe was refused, and returns it.
    private func startRefusingServer(_ box: Sandbox, _ options: [String], type: SocketType = .stream) async throws -> Child {
        var arguments = ["echo-server"] + options
        if type != .stream { arguments += ["--type", type.rawValue] }
        let server = try box.uds(arguments)
        try await box.waitUntilReady(server, address: "./uds_socket", type: type)
        try await server.waitForStderr("the probe's refusal") { $0.contains("refused a connection from pid=\(getpid()) ") }
        return server
    }

    @Test("--allow-uid of another user refuses our client, which fails; the server logs who it was and goes on",
          arguments: ["async", "threads"])
    func allowUIDRefuses(io: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await startRefusingServer(box, ["--allow-uid", "4242", "--io", io])

        let client = try await box.run(try box.uds(["echo-client", "--timeout", "5"]))
        #expect(client.termination == .exited(1), "\(client.transcript)")
        #expect(client.stderr.lines.count == 1, "\(client.transcript)")

        let line = "uds: refused a connection from pid=\(client.pid) uid=\(getuid()) gid=\(getgid()) command=uds: not an allowed uid or gid"
        try await server.waitForStderr("the client's refusal") { splitLines($0).contains(line) }
        #expect(server.isRunning)
        // Refused peers never show in the transcript.
        #expect(server.stdout.lines == Classic.serverStart(), "\(server.transcript)")
        #expect(server.stderr.lines.count == 2, "\(server.transcript)")
    }

    @Test("--allow-uid refuses seqpacket clients too")
    func allowUIDRefusesSeqpacket() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await startRefusingServer(box, ["--allow-uid", "4242"], type: .seqpacket)
        let client = try await box.run(try box.uds(["echo-client", "--type", "seqpacket", "--timeout", "5"]))
        #expect(client.termination == .exited(1), "\(client.transcript)")
        try await server.waitForStderr("the client's refusal") { $0.contains("refused a connection from pid=\(client.pid) ") }
    }

    @Test("--allow-gid admits our group and refuses another", arguments: ["async", "threads"])
    func allowGID(io: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let admitting = try await box.startEchoServer(nil, ["--allow-gid", String(getgid()), "--io", io])
        let admitted = try await box.run(try box.uds(["echo-client"]))
        #expect(admitted.termination == .exited(0), "\(admitted.transcript)")
        #expect(admitted.stdout.lines == Classic.client())
        admitting.signal(SIGTERM)
        try await admitting.waitForExit()

        let refusing = try await startRefusingServer(box, ["--allow-gid", "4242", "--io", io])
        let refused = try await box.run(try box.uds(["echo-client", "--timeout", "5"]))
        #expect(refused.termination == .exited(1), "\(refused.transcript)")
        try await refusing.waitForStderr("the client's refusal") {
            $0.contains("refused a connection from pid=\(refused.pid) uid=\(getuid()) gid=\(getgid()) command=uds")
        }
    }

    @Test("--allow-uid and --allow-gid: either one matching admits")
    func allowUIDOrGID() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer(nil, ["--allow-uid", "4242", "--allow-gid", String(getgid()), "--allow-uid", "4243"])
        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
    }

    /// A client that really is another user: admitted by --allow-uid with its
    /// uid (repeated options), and shown with that uid; we are refused.
    @Test("--allow-uid admits a client running as that user and shows its uid")
    func anotherUserIsAdmitted() async throws {
        try #require(getuid() == 0, "this test must run as root: a client becomes uid 4321")
        let box = try Sandbox()
        defer { box.cleanup() }
        let name = "@" + uniqueName("allow")
        let server = try box.uds(["echo-server", name, "--allow-uid", "4321", "--allow-uid", "4322", "--show-peer"])
        try await box.waitUntilReady(server, address: name, type: .stream)
        try await server.waitForStderr("the probe's refusal") { $0.contains("refused a connection from pid=\(getpid()) ") }

        // Become uid 4321 / gid 1234, then run `uds echo-client` in place (same pid).
        let script = """
            import os, sys
            os.setgroups([])
            os.setgid(1234)
            os.setuid(4321)
            os.execv(sys.argv[1], sys.argv[1:])
            """
        let uds = try Tools.uds()
        let client = try await box.run(try box.spawn("echo-client as 4321", try Tools.python(), ["-c", script, uds, "echo-client", name]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client(name))
        try await server.waitForLine("waiting for a connection", count: 2)
        #expect(server.stdout.lines.contains("peer pid=\(client.pid) uid=4321 gid=1234 command=uds"), "\(server.transcript)")
    }
}
