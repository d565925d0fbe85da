#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ChildProcesses
import Foundation
import Synchronization
import Testing

// Helpers for driving the real `uds` binary and its peers (the Python scripts in
// Peers/, socat, netcat) as subprocesses. Every wait is bounded: a child that
// hangs is killed and the test fails with what it had printed so far.

/// A setup problem that must fail the test (never skip it), with a message
/// saying what to do about it.
struct SetupFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The bounded wait for a child or a server, unless a test says otherwise.
let defaultTimeout: Duration = .seconds(10)

// MARK: - Tools

enum Tools {
    /// The `uds` binary: `UDS_BINARY` if set, else the one built next to this
    /// test bundle (the test target depends on the `uds` executable target).
    static func uds() throws -> String {
        try udsResult.get()
    }

    private static let udsResult: Result<String, SetupFailure> = {
        if let override = ProcessInfo.processInfo.environment["UDS_BINARY"], !override.isEmpty {
            guard FileManager.default.isExecutableFile(atPath: override) else {
                return .failure(SetupFailure("UDS_BINARY=\(override) is not an executable file"))
            }
            return .success(override)
        }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let directory = (executable as NSString).deletingLastPathComponent
        let candidate = directory + "/uds"
        guard !executable.isEmpty, FileManager.default.isExecutableFile(atPath: candidate) else {
            return .failure(SetupFailure(
                "the uds binary was not found at \(candidate) (next to the test bundle \(executable)); "
                    + "build it with `swift build --build-tests`, or set UDS_BINARY to its path"))
        }
        return .success(candidate)
    }()

    /// An external tool found on PATH; a missing one fails the test with the
    /// package that provides it.
    static func require(_ name: String, package: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw SetupFailure("\(name) is not installed (not found on PATH); install it with `apt-get install \(package)`")
    }

    static func socat() throws -> String { try require("socat", package: "socat") }

    /// netcat-openbsd's `nc`, which has `-U` and `-N`; another netcat fails the test.
    static func netcat() throws -> String {
        try netcatResult.get()
    }

    private static let netcatResult: Result<String, SetupFailure> = {
        let nc: String
        do { nc = try require("nc", package: "netcat-openbsd") } catch {
            return .failure(error as? SetupFailure ?? SetupFailure("\(error)"))
        }
        let help = capture(nc, ["-h"])
        guard help.contains("OpenBSD netcat") else {
            return .failure(SetupFailure(
                "\(nc) is not OpenBSD netcat (it needs -U and -N); install it with `apt-get install netcat-openbsd`"))
        }
        return .success(nc)
    }()

    /// The real Python 3 interpreter (resolved once through `sys.executable`,
    /// so a pyenv shim is not run for every peer).
    static func python() throws -> String {
        try pythonResult.get()
    }

    private static let pythonResult: Result<String, SetupFailure> = {
        let python3: String
        do { python3 = try require("python3", package: "python3") } catch {
            return .failure(error as? SetupFailure ?? SetupFailure("\(error)"))
        }
        let resolved = capture(python3, ["-c", "import sys; print(sys.executable)"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return .success(FileManager.default.isExecutableFile(atPath: resolved) ? resolved : python3)
    }()

    /// A peer script in Peers/, next to this file.
    static func peer(_ name: String) throws -> String {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Peers").appendingPathComponent(name).path
        guard FileManager.default.fileExists(atPath: path) else {
            throw SetupFailure("the peer script \(path) is missing")
        }
        return path
    }

    /// Runs a quick command and returns its standard output and error together
    /// (tool discovery, a stat); it gets 10 seconds before it is killed.
    static func capture(_ executable: String, _ arguments: [String]) -> String {
        guard let pipe = makeCloseOnExecPipe() else { return "" }
        let nothing = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(nothing) }
        let process: SpawnedProcess
        do {
            process = try SpawnedProcess(
                executable: executable, arguments: arguments,
                standardInput: nothing, standardOutput: pipe.write, standardError: pipe.write)
        } catch {
            close(pipe.read)
            close(pipe.write)
            return ""
        }
        close(pipe.write)
        let output = OutputCollector(descriptor: pipe.read)
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.01) }
        if process.isRunning {
            process.signal(SIGKILL)
            return ""
        }
        let drained = ContinuousClock.now + .seconds(3)
        while !output.isFinished && ContinuousClock.now < drained {
            Thread.sleep(forTimeInterval: 0.01)
        }
        return output.text
    }

    /// `ls`, for showing the socket file as `ls -l` does.
    static func ls() throws -> String { try require("ls", package: "coreutils") }
}

// MARK: - Output

/// Collects everything a child writes to one pipe, on a thread of its own.
final class OutputCollector: Sendable {
    private let state = Mutex<(bytes: [UInt8], finished: Bool)>(([], false))

    /// Takes ownership of `descriptor` and closes it at end of file.
    init(descriptor: CInt) {
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count > 0 {
                    state.withLock { $0.bytes.append(contentsOf: buffer[..<count]) }
                } else if count == -1 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            close(descriptor)
            state.withLock { $0.finished = true }
        }
    }

    var bytes: [UInt8] { state.withLock { $0.bytes } }
    var text: String { String(decoding: bytes, as: UTF8.self) }
    var lines: [String] { splitLines(text) }
    var isFinished: Bool { state.withLock { $0.finished } }
}

func splitLines(_ text: String) -> [String] {
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if lines.last == "" { lines.removeLast() }
    return lines
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func poll(timeout: Duration = defaultTimeout, every interval: Duration = .milliseconds(20),
          _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: interval)
    }
}

// MARK: - Children

/// How a child ended.
typealias Termination = SpawnedProcess.Termination

/// One running subprocess with its output collected.
final class Child: Sendable {
    let name: String
    let process: SpawnedProcess
    let stdout: OutputCollector
    let stderr: OutputCollector
    /// The write end of the child's standard input, when it was given a pipe.
    private let input: Mutex<CInt?>

    init(name: String, executable: String, arguments: [String], directory: String, withInput: Bool) throws {
        self.name = name
        guard let out = makeCloseOnExecPipe(), let err = makeCloseOnExecPipe() else {
            throw SetupFailure("pipe failed: errno \(errno)")
        }
        let inPipe = withInput ? makeCloseOnExecPipe() : nil
        let nothing = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            // The child has its copies; these ends are not ours to keep.
            close(nothing)
            close(out.write)
            close(err.write)
            if let inPipe { close(inPipe.read) }
        }
        do {
            process = try SpawnedProcess(
                executable: executable, arguments: arguments, directory: directory,
                standardInput: inPipe?.read ?? nothing, standardOutput: out.write, standardError: err.write)
        } catch {
            close(out.read)
            close(err.read)
            if let inPipe { close(inPipe.write) }
            throw SetupFailure("\(error)")
        }
        stdout = OutputCollector(descriptor: out.read)
        stderr = OutputCollector(descriptor: err.read)
        input = Mutex(inPipe?.write)
    }

    var pid: Int32 { process.pid }
    var isRunning: Bool { process.isRunning }

    /// How it ended; nil while it runs.
    var termination: Termination? { process.termination }

    /// What it printed so far, for failure messages.
    var transcript: String {
        "\(name) (pid \(pid)) stdout:\n\(stdout.text)\n\(name) stderr:\n\(stderr.text)"
    }

    /// Writes bytes to its standard input.
    func write(_ bytes: [UInt8]) throws {
        try input.withLock { descriptor in
            guard let descriptor else { throw SetupFailure("\(name) has no standard input pipe") }
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes {
                    Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset)
                }
                if written > 0 {
                    offset += written
                } else if written == -1 && errno == EINTR {
                    continue
                } else {
                    throw SetupFailure("writing to \(name)'s standard input failed: errno \(errno)")
                }
            }
        }
    }

    func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// Closes its standard input: end of file for the child.
    func closeInput() {
        input.withLock { descriptor in
            if let open = descriptor { close(open) }
            descriptor = nil
        }
    }

    func signal(_ number: Int32) {
        process.signal(number)
    }

    /// Waits until it exits, at most `timeout`; past that it is killed and the
    /// wait fails. Then waits (bounded) for its output pipes to be drained.
    @discardableResult
    func waitForExit(timeout: Duration = defaultTimeout) async throws -> Termination {
        let exited = await poll(timeout: timeout, every: .milliseconds(10)) { !process.isRunning }
        if !exited {
            signal(SIGKILL)
            _ = await poll(timeout: .seconds(5)) { !process.isRunning }
            throw SetupFailure("\(name) did not exit within \(timeout); killed it.\n\(transcript)")
        }
        // A grandchild that inherited the pipe could hold it open: do not wait forever.
        _ = await poll(timeout: .seconds(3)) { stdout.isFinished && stderr.isFinished }
        closeInput()
        return termination!
    }

    /// Waits until its standard output satisfies `condition`, at most `timeout`.
    func waitForStdout(timeout: Duration = defaultTimeout, _ what: String,
                       _ condition: @escaping (String) -> Bool) async throws {
        try await waitFor(stdout, "stdout", timeout: timeout, what, condition)
    }

    func waitForStderr(timeout: Duration = defaultTimeout, _ what: String,
                       _ condition: @escaping (String) -> Bool) async throws {
        try await waitFor(stderr, "stderr", timeout: timeout, what, condition)
    }

    /// Waits until `line` appeared at least `count` times on standard output.
    func waitForLine(_ line: String, count: Int = 1, timeout: Duration = defaultTimeout) async throws {
        try await waitForStdout(timeout: timeout, "\(count) × the line \"\(line)\"") { text in
            splitLines(text).filter { $0 == line }.count >= count
        }
    }

    private func waitFor(_ collector: OutputCollector, _ stream: String, timeout: Duration,
                         _ what: String, _ condition: (String) -> Bool) async throws {
        let seen = await poll(timeout: timeout) { condition(collector.text) }
        if !seen {
            throw SetupFailure("\(name)'s \(stream) did not show \(what) within \(timeout).\n\(transcript)")
        }
    }
}

// MARK: - Sandbox

/// A fresh, short temporary directory for one test and every child it starts
/// there; `cleanup()` kills the children still running and removes the directory.
final class Sandbox: Sendable {
    let path: String
    private let children = Mutex<[Child]>([])

    init() throws {
        // A write to a child that died must fail with EPIPE, not kill the tests.
        Glibc.signal(SIGPIPE, SIG_IGN)
        var template = Array("/tmp/udst-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw SetupFailure("mkdtemp failed: errno \(errno)") }
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Kills what still runs and removes the directory; for `defer`.
    func cleanup() {
        let all = children.withLock { $0 }
        for child in all where child.isRunning {
            child.signal(SIGKILL)
        }
        for child in all { child.closeInput() }
        try? FileManager.default.removeItem(atPath: path)
    }

    /// An absolute path for `name` in the sandbox; `@name` and absolute paths
    /// are returned as they are.
    func resolve(_ name: String) -> String {
        name.hasPrefix("@") || name.hasPrefix("/") ? name : path + "/" + name
    }

    /// The names in the sandbox directory, sorted.
    func entries() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    /// Starts a child with the sandbox as its working directory.
    func spawn(_ name: String, _ executable: String, _ arguments: [String], withInput: Bool = false) throws -> Child {
        let child = try Child(name: name, executable: executable, arguments: arguments,
                              directory: path, withInput: withInput)
        children.withLock { $0.append(child) }
        return child
    }

    func uds(_ arguments: [String], withInput: Bool = false) throws -> Child {
        try spawn("uds " + arguments.joined(separator: " "), try Tools.uds(), arguments, withInput: withInput)
    }

    func python(_ script: String, _ arguments: [String] = []) throws -> Child {
        try spawn(script, try Tools.python(), [try Tools.peer(script)] + arguments)
    }

    /// Runs a child to its end (bounded) and returns it.
    func run(_ child: Child, timeout: Duration = defaultTimeout) async throws -> Child {
        try await child.waitForExit(timeout: timeout)
        return child
    }

    /// Starts `uds echo-server` and waits until it is ready: the socket file
    /// exists and a connect succeeds. For a stream or seqpacket server that
    /// prints its transcript, it also waits until the probe connection's
    /// session is logged (``probeSession``), so the next client is alone.
    func startEchoServer(_ address: String? = nil, type: SocketType = .stream, _ options: [String] = [],
                         quiet: Bool = false) async throws -> Child {
        var arguments = ["echo-server"]
        if let address { arguments.append(address) }
        if type != .stream { arguments += ["--type", type.rawValue] }
        arguments += options
        if quiet { arguments.append("--quiet") }
        let server = try uds(arguments)
        try await waitUntilReady(server, address: address ?? "./uds_socket", type: type)
        if type != .dgram && !quiet {
            try await server.waitForLine("waiting for a connection", count: 2)
        }
        return server
    }

    /// Polls until `address` has a socket file (for a path) and a connect of
    /// `type` to it succeeds; fails if `server` exits first or time runs out.
    func waitUntilReady(_ server: Child, address: String, type: SocketType,
                        timeout: Duration = defaultTimeout) async throws {
        let target = resolve(address)
        var exitedEarly = false
        let ready = await poll(timeout: timeout) {
            if !server.isRunning {
                exitedEarly = true
                return true
            }
            if !target.hasPrefix("@") && fileType(target) != "s" { return false }
            return canConnect(target, type: type)
        }
        if exitedEarly {
            _ = await poll(timeout: .seconds(3)) { server.stderr.isFinished }
            throw SetupFailure("\(server.name) exited before it was ready (\(server.termination!)).\n\(server.transcript)")
        }
        if !ready {
            throw SetupFailure("\(server.name) was not ready at \(address) within \(timeout).\n\(server.transcript)")
        }
    }
}

// MARK: - Sockets and files

enum SocketType: String, Sendable, CaseIterable, CustomStringConvertible {
    case stream, dgram, seqpacket

    var raw: CInt {
        switch self {
        case .stream: CInt(SOCK_STREAM.rawValue)
        case .dgram: CInt(SOCK_DGRAM.rawValue)
        case .seqpacket: CInt(SOCK_SEQPACKET.rawValue)
        }
    }

    var description: String { rawValue }
}

/// Whether a connect of `type` to `address` (an absolute path or `@name`) succeeds.
/// The connection is closed at once.
func canConnect(_ address: String, type: SocketType) -> Bool {
    let fd = socket(AF_UNIX, type.raw | CInt(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let bytes: [UInt8] = address.hasPrefix("@") ? [0] + Array(address.utf8.dropFirst()) : Array(address.utf8) + [0]
    var storage = sockaddr_un()
    guard bytes.count <= MemoryLayout.size(ofValue: storage.sun_path) else { return false }
    storage.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &storage.sun_path) { $0.copyBytes(from: bytes) }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
    let result = withUnsafePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
    }
    return result == 0
}

/// The `ls -l` type letter of the file at `path` (not following a symlink), or nil.
func fileType(_ path: String) -> Character? {
    var status = stat()
    guard lstat(path, &status) == 0 else { return nil }
    switch status.st_mode & S_IFMT {
    case S_IFSOCK: return "s"
    case S_IFREG: return "-"
    case S_IFDIR: return "d"
    case S_IFLNK: return "l"
    case S_IFIFO: return "p"
    case S_IFCHR: return "c"
    case S_IFBLK: return "b"
    default: return "?"
    }
}

/// The permission bits of the file at `path`, or nil.
func permissionBits(_ path: String) -> mode_t? {
    var status = stat()
    guard lstat(path, &status) == 0 else { return nil }
    return status.st_mode & 0o7777
}

/// The inode of the file at `path`, or nil.
func inode(_ path: String) -> UInt64? {
    var status = stat()
    guard lstat(path, &status) == 0 else { return nil }
    return UInt64(status.st_ino)
}

/// How `uds echo-server` serves stream connections (`--io`).
enum IOModel: String, Sendable, CaseIterable, CustomStringConvertible {
    /// On the event loop: the default.
    case async
    /// A thread per connection.
    case threads
    /// Readiness handlers on the loop: no task per connection.
    case handlers

    var options: [String] { ["--io", rawValue] }
    var description: String { "--io \(rawValue)" }
}

/// An echo server's socket type and, for stream, its I/O model.
struct ServerVariant: Sendable, CustomStringConvertible {
    let type: SocketType
    let options: [String]
    let description: String

    static let all: [ServerVariant] = IOModel.allCases.map {
        ServerVariant(type: .stream, options: $0.options, description: "stream \($0)")
    } + [ServerVariant(type: .dgram, options: [], description: "dgram"),
         ServerVariant(type: .seqpacket, options: [], description: "seqpacket")]
}

/// A name no other test (or test run) uses, for abstract addresses.
func uniqueName(_ stem: String) -> String {
    "uds-test-\(stem)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

// MARK: - The classic transcripts

enum Classic {
    static let message = "This is the message. It will be repeated."

    /// What the classic client prints against an echo server.
    static func client(_ address: String = "./uds_socket") -> [String] {
        [
            "connecting to \(address)",
            "sending b'This is the message. It will be repeated.'",
            "received b'This is the mess'",
            "received b'age. It will be '",
            "received b'repeated.'",
            "closing socket",
        ]
    }

    /// What the classic server prints for one unnamed client that sent the
    /// message, up to but not including the next "waiting for a connection".
    static let serverSession = [
        "connection from ",
        "received b'This is the mess'",
        "sending data back to the client",
        "received b'age. It will be '",
        "sending data back to the client",
        "received b'repeated.'",
        "sending data back to the client",
        "received b''",
        "no data from ",
    ]

    /// The start of the server's transcript.
    static func serverStart(_ address: String = "./uds_socket") -> [String] {
        ["starting up on \(address)", "waiting for a connection"]
    }
}

/// What `uds echo-server` prints for the readiness probe (a connect that sends
/// nothing): the classic transcript of an empty session.
let probeSession = ["connection from ", "received b''", "no data from ", "waiting for a connection"]

