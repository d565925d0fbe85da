#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds probe`, `uds ls` and `uds stat` on live, stale, non-socket, missing
/// and permission-denied paths, and on abstract names.
@Suite("uds probe, ls, stat", .timeLimit(.minutes(2)))
struct InspectCLITests {

    /// Runs `uds ARGUMENTS` as a user who may not connect to root's 0600
    /// sockets: as root, the user nobody (through setpriv); otherwise this
    /// user, on sockets whose mode is 000.
    private func runUnprivileged(_ box: Sandbox, _ arguments: [String]) async throws -> Child {
        if geteuid() != 0 { return try await box.runUDS(arguments) }
        let setpriv = try Tools.require("setpriv", package: "util-linux")
        let child = try box.spawn(
            "uds (as nobody) " + arguments.joined(separator: " "), setpriv,
            ["--reuid=65534", "--regid=65534", "--clear-groups", "--", try Tools.uds()] + arguments)
        return try await box.run(child)
    }

    /// A socket file nobody but its owner may connect to, with a listener.
    private func forbiddenListener(_ box: Sandbox, _ name: String) async throws -> Child {
        // Others (nobody) must be able to reach the directory, not the socket.
        chmod(box.path, 0o755)
        let listener = try await box.pythonListener(name)
        chmod(box.resolve(name), geteuid() == 0 ? 0o600 : 0o000)
        return listener
    }

    private func json(_ child: Child) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(child.stdout.bytes))
    }

    // MARK: probe

    @Test("probe: a live listener, with its process; exit status 0")
    func probeLive() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let python = try await box.pythonListener("live.sock")
        let probe = try await box.runUDS(["probe", "./live.sock"])
        #expect(probe.termination == .exited(0), "\(probe.transcript)")
        #expect(probe.stdout.lines.count == 1)
        #expect(probe.stdout.text.hasPrefix(
            "./live.sock: listening (stream) pid=\(python.pid) uid=\(getuid()) gid=\(getgid()) command=python"),
            "\(probe.transcript)")

        let asJSON = try await box.runUDS(["probe", "./live.sock", "--json"])
        #expect(asJSON.termination == .exited(0))
        let object = try json(asJSON) as? [String: Any]
        #expect(object?["state"] as? String == "listening")
        #expect(object?["type"] as? String == "stream")
        #expect(object?["pid"] as? Int == Int(python.pid))

        let datagram = try await box.pythonListener("d.sock", type: "SOCK_DGRAM")
        _ = datagram
        let dgram = try await box.runUDS(["probe", "./d.sock"])
        #expect(dgram.termination == .exited(0), "\(dgram.transcript)")
        #expect(dgram.stdout.lines == ["./d.sock: listening (dgram)"])
    }

    @Test("probe: stale 2, not a socket 3, nothing there 5")
    func probeOtherStates() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try await box.makeStaleSocket("./stale.sock")
        try "x".write(toFile: box.resolve("plain"), atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: box.resolve("dir"), withIntermediateDirectories: false)
        #expect(mkfifo(box.resolve("fifo"), 0o600) == 0)

        let cases: [(String, Int32, String)] = [
            ("./stale.sock", 2, "./stale.sock: stale socket file: nobody is listening (binding there replaces it)"),
            ("./plain", 3, "./plain: not a socket: a regular file"),
            ("./dir", 3, "./dir: not a socket: a directory"),
            ("./fifo", 3, "./fifo: not a socket: a named pipe"),
            ("./missing.sock", 5, "./missing.sock: nothing there: no such file"),
            ("./plain/below", 5, "./plain/below: nothing there: no such file"),
        ]
        for (address, status, line) in cases {
            let probe = try await box.runUDS(["probe", address])
            #expect(probe.termination == .exited(status), "\(address): \(probe.transcript)")
            #expect(probe.stdout.lines == [line])
        }
        #expect(fileType(box.resolve("stale.sock")) == "s", "probe must not remove a stale socket")

        let quiet = try await box.runUDS(["probe", "./stale.sock", "--quiet"])
        #expect(quiet.termination == .exited(2))
        #expect(quiet.stdout.text == "")
    }

    @Test("probe: permission denied is exit status 4, for probe and ls alike")
    func probeNoPermission() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let listener = try await forbiddenListener(box, "secret.sock")
        let probe = try await runUnprivileged(box, ["probe", box.resolve("secret.sock")])
        #expect(probe.termination == .exited(4), "\(probe.transcript)")
        #expect(probe.stdout.lines == ["\(box.resolve("secret.sock")): no permission to connect"])

        let list = try await runUnprivileged(box, ["ls", box.path, "--json"])
        #expect(list.termination == .exited(0), "\(list.transcript)")
        let rows = try json(list) as? [[String: Any]]
        #expect(rows?.count == 1)
        #expect(rows?.first?["state"] as? String == "no permission")
        #expect(listener.isRunning)
    }

    @Test("probe: abstract names, live and missing")
    func probeAbstract() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let name = "@" + uniqueName("probe")
        let python = try await box.pythonListener(name)
        let live = try await box.runUDS(["probe", name])
        #expect(live.termination == .exited(0), "\(live.transcript)")
        #expect(live.stdout.text.hasPrefix("\(name): listening (stream) pid=\(python.pid) "), "\(live.transcript)")

        let missing = try await box.runUDS(["probe", name + "-nothing"])
        #expect(missing.termination == .exited(5), "\(missing.transcript)")
        #expect(missing.stdout.lines == ["\(name)-nothing: nothing there: no socket has this name"])
    }

    @Test("probe --no-identify is unseen by the server; without it, the server accepts an empty connection")
    func probeIdentifyIsSeen() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        // A one-connection listener: it exits after its first client.
        let listener = try box.uds(["listen", "./one.sock"])
        _ = try await listener.listeningEndpoint()

        let quiet = try await box.runUDS(["probe", "./one.sock", "--no-identify"])
        #expect(quiet.termination == .exited(0), "\(quiet.transcript)")
        #expect(quiet.stdout.lines == ["./one.sock: listening"])
        try await Task.sleep(for: .milliseconds(300))
        #expect(listener.isRunning, "the datagram probe must not be seen as a connection")

        let full = try await box.runUDS(["probe", "./one.sock"])
        #expect(full.termination == .exited(0), "\(full.transcript)")
        #expect(full.stdout.text.hasPrefix("./one.sock: listening (stream) pid=\(listener.pid) "), "\(full.transcript)")
        #expect(try await listener.waitForExit() == .exited(0), "the listener took the probe as its client")
        #expect(listener.stdout.text == "")
    }

    @Test("probe over TCP: listening 0, refused 5")
    func probeTCP() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let (listener, port) = try TestSocket.listenTCP()
        let live = try await box.runUDS(["probe", "tcp:127.0.0.1:\(port)"])
        #expect(live.termination == .exited(0), "\(live.transcript)")
        #expect(live.stdout.lines == ["tcp:127.0.0.1:\(port): listening (tcp)"])
        listener.close()
        let refused = try await box.runUDS(["probe", "tcp:127.0.0.1:\(port)"])
        #expect(refused.termination == .exited(5), "\(refused.transcript)")
    }

    // MARK: ls

    @Test("ls: socket files with mode, owner, type, state and the listening process")
    func listDirectory() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let python = try await box.pythonListener("live.sock")
        let datagram = try await box.pythonListener("d.sock", type: "SOCK_DGRAM")
        try await box.makeStaleSocket("./stale.sock")
        chmod(box.resolve("stale.sock"), 0o600)
        try "x".write(toFile: box.resolve("plain"), atomically: false, encoding: .utf8)
        #expect(mkfifo(box.resolve("fifo"), 0o600) == 0)

        let list = try await box.runUDS(["ls"])
        #expect(list.termination == .exited(0), "\(list.transcript)")
        let rows = list.stdout.lines.map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.first == ["MODE", "OWNER", "GROUP", "TYPE", "STATE", "PROCESS", "PATH"])
        #expect(rows.count == 4, "three sockets, nothing else:\n\(list.stdout.text)")
        let byPath = Dictionary(uniqueKeysWithValues: rows.dropFirst().map { ($0.last!, $0) })
        #expect(byPath["./d.sock"]?[3...5] == ["dgram", "listening", "\(datagram.pid)/\(command(datagram))"][...], "\(list.stdout.text)")
        #expect(byPath["./live.sock"]?[3...5] == ["stream", "listening", "\(python.pid)/\(command(python))"][...], "\(list.stdout.text)")
        #expect(byPath["./stale.sock"]?[0] == "srw-------")
        #expect(byPath["./stale.sock"]?[3...5] == ["-", "stale", "-"][...], "\(list.stdout.text)")

        let asJSON = try await box.runUDS(["ls", box.path, "--json"])
        #expect(asJSON.termination == .exited(0), "\(asJSON.transcript)")
        let objects = try json(asJSON) as? [[String: Any]] ?? []
        #expect(objects.map { $0["path"] as? String } == ["d.sock", "live.sock", "stale.sock"].map { box.path + "/" + $0 })
        let live = objects.first { ($0["path"] as? String)?.hasSuffix("/live.sock") == true }
        #expect(live?["state"] as? String == "listening")
        #expect(live?["type"] as? String == "stream")
        #expect(live?["uid"] as? Int == Int(getuid()))
        #expect(live?["mode"] as? String == "s" + String(modeString(box.resolve("live.sock")).dropFirst()))
        let processes = live?["processes"] as? [[String: Any]]
        #expect(processes?.first?["pid"] as? Int == Int(python.pid))
        let stale = objects.first { ($0["path"] as? String)?.hasSuffix("/stale.sock") == true }
        #expect(stale?["state"] as? String == "stale")
        #expect(stale?["permissions"] as? String == "0600")
    }

    @Test("ls --abstract lists abstract names, never a socket file whose name starts with @")
    func listAbstract() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let name = uniqueName("ls")
        let abstract = try await box.pythonListener("@" + name)
        // A socket *file* named "@NAME-file", bound by a relative path, as `ss` would misreport.
        let script = """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX)
            s.bind(sys.argv[1])
            s.listen(4)
            print("ready", flush=True)
            time.sleep(120)
            """
        let file = try box.spawn("python file listener", try Tools.python(), ["-c", script, "@\(name)-file"])
        try await file.waitForLine("ready")
        #expect(fileType(box.path + "/@\(name)-file") == "s")

        let list = try await box.runUDS(["ls", "--abstract"])
        #expect(list.termination == .exited(0), "\(list.transcript)")
        let line = list.stdout.lines.first { $0.hasSuffix(" @\(name)") }
        #expect(line?.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            == ["stream", "listening", "\(abstract.pid)/\(command(abstract))", "@\(name)"], "\(list.stdout.text)")
        #expect(!list.stdout.text.contains("@\(name)-file"), "a socket file was listed as abstract:\n\(list.stdout.text)")

        let asJSON = try await box.runUDS(["ls", "--abstract", "--json"])
        let objects = try json(asJSON) as? [[String: Any]] ?? []
        #expect(objects.contains { $0["name"] as? String == "@\(name)" && $0["state"] as? String == "listening" })

        let files = try await box.runUDS(["ls"])
        #expect(files.stdout.lines.contains { $0.hasSuffix("./@\(name)-file") && $0.contains("\(file.pid)/\(command(file))") },
            "\(files.stdout.text)")
    }

    @Test("ls on a missing directory fails with one line")
    func listMissing() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let list = try await box.runUDS(["ls", "./nowhere"])
        #expect(list.termination == .exited(1))
        #expect(list.stderr.lines == ["uds: stat(./nowhere): no such file or directory"])
    }

    // MARK: stat

    @Test("stat: the ls -l letter of each file type, mode, owner, size, inode")
    func statFiles() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.pythonListener("s.sock")
        try "12345".write(toFile: box.resolve("plain"), atomically: false, encoding: .utf8)
        chmod(box.resolve("plain"), 0o640)
        try FileManager.default.createDirectory(atPath: box.resolve("dir"), withIntermediateDirectories: false)
        #expect(mkfifo(box.resolve("fifo"), 0o600) == 0)
        #expect(symlink("plain", box.resolve("link")) == 0)

        let expected: [(String, String, String)] = [
            ("s.sock", "s", "socket"), ("plain", "-", "regular file"), ("dir", "d", "directory"),
            ("fifo", "p", "named pipe"), ("link", "l", "symbolic link"), ("/dev/null", "c", "character device"),
        ]
        for (path, letter, type) in expected {
            let stat = try await box.runUDS(["stat", path, "--json"])
            #expect(stat.termination == .exited(0), "\(stat.transcript)")
            let object = try json(stat) as? [String: Any]
            #expect(object?["letter"] as? String == letter, "\(path)")
            #expect(object?["type"] as? String == type, "\(path)")
            #expect((object?["mode"] as? String)?.first.map(String.init) == letter, "\(path)")
            #expect(object?["inode"] as? Int == inode(box.resolve(path)).map(Int.init), "\(path)")
        }

        let plain = try await box.runUDS(["stat", "plain"])
        #expect(plain.stdout.lines.prefix(6) == [
            "path: plain",
            "type: regular file (-)",
            "mode: -rw-r----- (0640)",
            "owner: \(userName()) (uid \(getuid()))",
            "group: \(groupName()) (gid \(getgid()))",
            "size: 5",
        ])

        let missing = try await box.runUDS(["stat", "missing"])
        #expect(missing.termination == .exited(1))
        #expect(missing.stderr.lines == ["uds: stat(missing): no such file or directory"])
    }
}

/// The command name of a child, as /proc tells it (python3, or python3.12, ...).
private func command(_ child: Child) -> String {
    let name = (try? String(contentsOfFile: "/proc/\(child.pid)/comm", encoding: .utf8)) ?? "?"
    return name.trimmingCharacters(in: .newlines)
}

/// What `ls -l` prints as the mode of `path`, from `stat(1)` itself.
private func modeString(_ path: String) -> String {
    Tools.capture("/usr/bin/stat", ["-c", "%A", path]).trimmingCharacters(in: .whitespacesAndNewlines)
}

private func userName() -> String {
    getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? String(getuid())
}

private func groupName() -> String {
    getgrgid(getgid()).map { String(cString: $0.pointee.gr_name) } ?? String(getgid())
}
