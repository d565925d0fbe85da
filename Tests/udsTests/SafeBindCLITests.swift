#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// What `uds echo-server` does with whatever is already at its path, and the
/// socket file it creates.
@Suite("Safe bind from the CLI", .timeLimit(.minutes(2)))
struct SafeBindCLITests {

    /// Runs `uds echo-server` where it must refuse to start: it exits with
    /// status 1 after printing its start-up line and one error line.
    private func refusedServer(_ box: Sandbox, _ arguments: [String]) async throws -> Child {
        let server = try await box.run(try box.uds(["echo-server"] + arguments))
        #expect(server.termination == .exited(1), "\(server.transcript)")
        #expect(server.stderr.lines.count == 1, "one error line expected:\n\(server.transcript)")
        #expect(server.stderr.lines.first?.hasPrefix("uds: ") == true)
        return server
    }

    @Test("a regular file at the path is left alone and reported")
    func regularFile() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let contents = "precious data, not a socket\n"
        try contents.write(toFile: box.resolve("uds_socket"), atomically: false, encoding: .utf8)

        let server = try await refusedServer(box, [])
        #expect(server.stdout.lines == ["starting up on ./uds_socket"])
        let error = server.stderr.text
        #expect(error.contains("bind("), "\(error)")
        #expect(error.contains("not a socket"), "\(error)")
        #expect(error.contains("./uds_socket"), "\(error)")
        #expect(fileType(box.resolve("uds_socket")) == "-")
        #expect(try String(contentsOfFile: box.resolve("uds_socket"), encoding: .utf8) == contents)
    }

    @Test("a directory at the path is left alone and reported")
    func directory() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try FileManager.default.createDirectory(atPath: box.resolve("uds_socket"), withIntermediateDirectories: false)
        try "kept\n".write(toFile: box.resolve("uds_socket/inside.txt"), atomically: false, encoding: .utf8)

        let server = try await refusedServer(box, ["./uds_socket"])
        let error = server.stderr.text
        #expect(error.contains("bind(./uds_socket)"), "\(error)")
        #expect(error.contains("directory"), "\(error)")
        #expect(error.contains("not a socket"), "\(error)")
        #expect(fileType(box.resolve("uds_socket")) == "d")
        #expect(try String(contentsOfFile: box.resolve("uds_socket/inside.txt"), encoding: .utf8) == "kept\n")
    }

    @Test("a second server at a live server's path fails; the first keeps serving")
    func liveServer() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let first = try await box.startEchoServer(nil, ["--chunk", "16"])
        let socketInode = inode(box.resolve("uds_socket"))

        let second = try await refusedServer(box, ["./uds_socket"])
        #expect(second.stderr.text.contains("already listening"), "\(second.transcript)")
        #expect(second.stderr.text.contains("bind(./uds_socket)"), "\(second.transcript)")
        #expect(inode(box.resolve("uds_socket")) == socketInode, "the live server's socket file was replaced")

        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client())
        try await first.waitForLine("waiting for a connection", count: 3)
        // The second server's liveness check left no connection behind: the
        // first server saw only the readiness probe and the client.
        #expect(first.stdout.lines
            == Classic.serverStart() + probeSession + Classic.serverSession + ["waiting for a connection"])
        #expect(first.stderr.text == "")
    }

    enum StaleMaker: String, CaseIterable, CustomStringConvertible {
        /// Python binds a socket and exits without unlinking it.
        case pythonExit
        /// A uds echo-server killed with SIGKILL cannot remove its file.
        case killedServer
        var description: String { rawValue }
    }

    @Test("a stale socket file is replaced, with a notice, and clients are served", arguments: StaleMaker.allCases)
    func staleSocket(maker: StaleMaker) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        switch maker {
        case .pythonExit:
            let script = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])"
            let python = try await box.run(try box.spawn("python bind", try Tools.python(), ["-c", script, "./uds_socket"]))
            #expect(python.termination == .exited(0), "\(python.transcript)")
        case .killedServer:
            let doomed = try await box.startEchoServer()
            doomed.signal(SIGKILL)
            #expect(try await doomed.waitForExit() == .signaled(SIGKILL))
        }
        try #require(fileType(box.resolve("uds_socket")) == "s", "no stale socket file was left behind")
        #expect(!canConnect(box.resolve("uds_socket"), type: .stream))

        let server = try await box.startEchoServer(nil, ["--chunk", "16"])
        try await server.waitForStderr("the stale-file notice") { $0.contains("removed stale socket file") }
        #expect(server.stderr.lines.count == 1, "\(server.transcript)")
        #expect(server.stderr.text.contains("./uds_socket"))

        let client = try await box.run(try box.uds(["echo-client"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client())
        let python = try await box.run(try box.python("classic_client.py"))
        #expect(python.termination == .exited(0), "\(python.transcript)")
        #expect(python.stdout.lines == Classic.client())
    }

    @Test("a path longer than 107 bytes is refused with its length and the limit; 107 bytes work")
    func pathLength() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        func path(length: Int) -> String {
            let stem = box.path + "/"
            return stem + String(repeating: "p", count: length - stem.utf8.count)
        }

        let tooLong = path(length: 108)
        #expect(tooLong.utf8.count == 108)
        for command in ["echo-server", "echo-client"] {
            let child = try await box.run(try box.uds([command, tooLong]))
            #expect(child.termination == .exited(1), "\(child.transcript)")
            #expect(child.stderr.lines.count == 1, "\(child.transcript)")
            let error = child.stderr.text
            #expect(error.hasPrefix("uds: "), "\(error)")
            #expect(error.contains("108"), "the length is not named: \(error)")
            #expect(error.contains("107"), "the limit is not named: \(error)")
        }
        #expect(box.entries() == [], "nothing may be created for a path that does not fit")

        let longest = path(length: 107)
        _ = try await box.startEchoServer(longest, ["--chunk", "16"])
        #expect(fileType(longest) == "s")
        let client = try await box.run(try box.uds(["echo-client", longest]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == Classic.client(longest))
    }

    @Test("--mode sets the socket file's permissions", arguments: [
        ("600", "srw-------"), ("660", "srw-rw----"), ("666", "srw-rw-rw-"),
    ])
    func mode(mode: String, expected: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer("./mode.sock", ["--mode", mode])
        let path = box.resolve("mode.sock")
        #expect(permissionBits(path) == mode_t(mode, radix: 8))

        let ls = try await box.run(try box.spawn("ls", try Tools.ls(), ["-l", "mode.sock"]))
        #expect(ls.termination == .exited(0))
        #expect(ls.stdout.text.hasPrefix(expected + " "), "ls -l shows \(ls.stdout.text)")
    }

    @Test("the socket file shows as type s, size 0, in ls -l")
    func lsShowsSocket() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer()

        let ls = try await box.run(try box.spawn("ls", try Tools.ls(), ["-l", "./uds_socket"]))
        #expect(ls.termination == .exited(0), "\(ls.transcript)")
        let line = ls.stdout.lines.first ?? ""
        #expect(line.first == "s", "ls -l shows \(line)")
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        #expect(fields.count >= 9 && fields[4] == "0", "size is not 0: \(line)")
        #expect(fields.last == "./uds_socket")
    }
}
