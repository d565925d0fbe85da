#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Errors that say what uds can find out (a regular file, a socket of
/// another type, the empty abstract name), and bound datagram sockets that
/// `ls` and `probe` keep finding once a peer has connected to them.
@Suite("uds errors and datagram holders", .timeLimit(.minutes(2)))
struct DiagnosisCLITests {

    @Test("connect to a regular file says it is one, not connection refused")
    func connectRegularFile() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = FileManager.default.createFile(atPath: box.resolve("file.txt"), contents: Data("hi\n".utf8))
        let connect = try await box.runUDS(["connect", "./file.txt"], input: [])
        #expect(connect.termination == .exited(1))
        #expect(connect.stderr.lines == ["uds: connect(./file.txt): the path is a regular file, not a socket"],
            "\(connect.transcript)")
        #expect(FileManager.default.contents(atPath: box.resolve("file.txt")) == Data("hi\n".utf8))
    }

    @Test("connect to a socket of another type names its type and the --type to use")
    func connectWrongType() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.pythonListener("d.sock", type: "SOCK_DGRAM")
        _ = try await box.pythonListener("q.sock", type: "SOCK_SEQPACKET")
        _ = try await box.pythonListener("s.sock")
        let cases: [([String], String)] = [
            (["connect", "./d.sock"], "uds: connect(./d.sock): a datagram socket is bound there, not a stream listener; use --type dgram"),
            (["connect", "./q.sock"], "uds: connect(./q.sock): a seqpacket listener is there, not a stream listener; use --type seqpacket"),
            (["connect", "./s.sock", "--type", "seqpacket"], "uds: connect(./s.sock): a stream listener is there, not a seqpacket listener; use --type stream"),
            (["send", "./s.sock", "hi"], "uds: sendto(./s.sock): a stream listener is there, not a datagram socket; use uds connect"),
            (["relay", "stdio", "./d.sock"], "uds: connect(./d.sock): a datagram socket is there, not a stream listener"),
        ]
        for (arguments, line) in cases {
            let child = try await box.runUDS(arguments, input: [])
            #expect(child.termination == .exited(1), "\(child.transcript)")
            #expect(child.stderr.lines == [line], "\(child.transcript)")
        }
    }

    @Test("send with no message still reports a path in a missing directory")
    func sendNowhere() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let send = try await box.runUDS(["send", "./missing/x.sock"], input: [])
        #expect(send.termination == .exited(1))
        #expect(send.stderr.lines == ["uds: sendto(./missing/x.sock): no such file or directory"], "\(send.transcript)")
        let abstract = try await box.runUDS(["send", "@" + uniqueName("none"), "hi"])
        #expect(abstract.termination == .exited(1))
        #expect(abstract.stderr.text.contains("no socket has this name"), "\(abstract.transcript)")
    }

    @Test("the empty abstract name is refused by every command that binds")
    func emptyAbstractName() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        for arguments in [["listen", "@"], ["echo-server", "@"], ["recv", "@"], ["relay", "unix-listen:@", "stdio"],
                          ["send", "./x.sock", "hi", "--bind", "@"]] {
            let child = try await box.runUDS(arguments, input: [])
            #expect(child.termination == .exited(1), "\(child.transcript)")
            #expect(child.stderr.lines == ["uds: bind(@): the empty abstract name cannot be bound; give a name after @"],
                "\(child.transcript)")
        }
    }

    @Test("echo-server run by another user on root's live socket names bind, not probe")
    func bindForbidden() async throws {
        guard geteuid() == 0 else { return }  // Needs a second user to run as.
        let box = try Sandbox()
        defer { box.cleanup() }
        chmod(box.path, 0o755)
        let server = try await box.startEchoServer(box.resolve("root.sock"), ["--mode", "600"], quiet: true)
        let setpriv = try Tools.require("setpriv", package: "util-linux")
        let rival = try await box.run(try box.spawn(
            "uds (as nobody) echo-server", setpriv,
            ["--reuid=65534", "--regid=65534", "--clear-groups", "--", try Tools.uds(), "echo-server", box.resolve("root.sock")]))
        #expect(rival.termination == .exited(1))
        let line = rival.stderr.lines.last ?? ""
        #expect(line.hasPrefix("uds: bind(\(box.resolve("root.sock"))): permission denied"), "\(rival.transcript)")
        #expect(!rival.stderr.text.contains("probe("), "\(rival.transcript)")
        #expect(server.isRunning && fileType(box.resolve("root.sock")) == "s")
    }

    @Test("a client refused by --allow-uid is told the server closed, and why that may be")
    func refusedClient() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let uid = getuid() == 4242 ? "4243" : "4242"
        _ = try await box.startEchoServer("./a.sock", ["--allow-uid", uid], quiet: true)
        // Writes until the refusal shows: the first write may land before the close.
        let client = try box.uds(["connect", "./a.sock"], withInput: true)
        for _ in 0..<50 where client.isRunning {
            try? client.write("hello\n")
            try await Task.sleep(for: .milliseconds(20))
        }
        client.closeInput()
        _ = try await box.run(client)
        if client.termination == .exited(1) {
            #expect(client.stderr.text.contains("a server that refuses a client"), "\(client.transcript)")
        } else {
            #expect(client.termination == .exited(0), "\(client.transcript)")  // Saw end-of-stream first.
        }
        #expect(client.stdout.text.isEmpty)
    }

    // MARK: datagram holders

    /// Connects a datagram socket to `address` and sends one message, as any
    /// client does; on Linux that marks the bound socket connected.
    private func datagramPeer(_ box: Sandbox, _ address: String) async throws {
        let script = """
            import socket, sys
            name = sys.argv[1]
            c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            c.connect("\\0" + name[1:] if name.startswith("@") else name)
            c.send(b"x")
            """
        let python = try await box.run(try box.spawn("python dgram peer", try Tools.python(), ["-c", script, address]))
        #expect(python.termination == .exited(0), "\(python.transcript)")
    }

    @Test("ls keeps a bound datagram socket's process after a peer connected to it")
    func listDatagramAfterConnect() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let python = try await box.pythonListener("d.sock", type: "SOCK_DGRAM")
        try await datagramPeer(box, "./d.sock")
        for _ in 0..<2 {  // The second time after ls's own probe.
            let list = try await box.runUDS(["ls", "--json"])
            let rows = try JSONSerialization.jsonObject(with: Data(list.stdout.bytes)) as? [[String: Any]] ?? []
            let row = rows.first { $0["path"] as? String == "./d.sock" }
            #expect(row?["type"] as? String == "dgram", "\(list.transcript)")
            let pids = (row?["processes"] as? [[String: Any]] ?? []).compactMap { $0["pid"] as? Int }
            #expect(pids == [Int(python.pid)], "\(list.transcript)")
        }
    }

    @Test("ls --abstract and probe keep an abstract datagram socket a peer connected to")
    func abstractDatagramAfterConnect() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let name = "@" + uniqueName("dg")
        let python = try await box.pythonListener(name, type: "SOCK_DGRAM")
        try await datagramPeer(box, name)
        let list = try await box.runUDS(["ls", "--abstract"])
        let line = list.stdout.lines.first { $0.hasSuffix(" " + name) }
        #expect(line?.hasPrefix("dgram") == true && line?.contains("\(python.pid)/python") == true, "\(list.transcript)")
        let probe = try await box.runUDS(["probe", name])
        #expect(probe.termination == .exited(0), "\(probe.transcript)")
        #expect(probe.stdout.lines == ["\(name): listening (dgram)"], "\(probe.transcript)")
    }
}
