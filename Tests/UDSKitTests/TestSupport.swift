import ChildProcesses
import Foundation
import Glibc
import Synchronization
import Testing
import UDSKit

// Helpers shared by the UDSKit tests. Swift Testing runs tests in parallel in
// one process, so every test works in its own temporary directory and uses
// abstract names that carry the pid and a random number.

// MARK: Temporary directories

/// A short, unique directory under /tmp (short, so that socket paths stay well
/// under the 107-byte limit unless a test means to reach it).
struct TemporaryDirectory: Sendable {
    let path: String

    /// The path of `name` inside this directory.
    func path(_ name: String) -> String { path + "/" + name }

    /// A path address for `name` inside this directory.
    func address(_ name: String) throws -> UnixAddress { try UnixAddress(path: path(name)) }
}

/// Runs `body` with a fresh directory made by `mkdtemp`, then removes the
/// directory and everything in it.
func withTemporaryDirectory<R>(_ body: (TemporaryDirectory) throws -> R) throws -> R {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory.path) }
    return try body(directory)
}

/// `withTemporaryDirectory` for async bodies.
func withTemporaryDirectoryAsync<R>(_ body: (TemporaryDirectory) async throws -> R) async throws -> R {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory.path) }
    return try await body(directory)
}

private func makeTemporaryDirectory() throws -> TemporaryDirectory {
    var template = Array("/tmp/udsk-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    guard made != nil else { throw POSIXFailure(call: "mkdtemp", errno: errno) }
    return TemporaryDirectory(path: String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
}

struct POSIXFailure: Error, CustomStringConvertible {
    let call: String
    let errno: CInt
    var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

// MARK: Unique abstract names

/// An abstract name no other test (or test run) uses: it carries the pid and a
/// random number.
func uniqueAbstractAddress(_ tag: String = "t") throws -> UnixAddress {
    try UnixAddress(abstractName: uniqueAbstractName(tag))
}

func uniqueAbstractName(_ tag: String = "t") -> String {
    "udskit-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))-\(tag)"
}

// MARK: Reproducible randomness

/// SplitMix64: a seeded generator, so a random test checks the same cases on
/// every run and a failure can be replayed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}

// MARK: Files

/// The identity of a file: device and inode.
struct FileIdentity: Hashable, Sendable {
    let device: UInt64
    let inode: UInt64
    let mode: UInt32

    var type: UInt32 { mode & UInt32(S_IFMT) }
    var permissions: UInt32 { mode & 0o7777 }
    var isSocket: Bool { type == UInt32(S_IFSOCK) }

    init(_ status: stat) {
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
        mode = UInt32(status.st_mode)
    }

    /// Whether two identities name the same file (the mode may change).
    func isSameFile(as other: FileIdentity) -> Bool {
        device == other.device && inode == other.inode
    }
}

/// `lstat`: the file at `path` itself, not what a symlink points to; nil if absent.
func fileIdentity(atPath path: String) -> FileIdentity? {
    var status = stat()
    guard lstat(path, &status) == 0 else { return nil }
    return FileIdentity(status)
}

/// `fstat` of a descriptor; nil if it is not open.
func fileIdentity(ofDescriptor fd: CInt) -> FileIdentity? {
    var status = stat()
    guard fstat(fd, &status) == 0 else { return nil }
    return FileIdentity(status)
}

func fileExists(atPath path: String) -> Bool { fileIdentity(atPath: path) != nil }

func writeFile(_ path: String, contents: String) throws {
    try contents.write(toFile: path, atomically: false, encoding: .utf8)
}

func readFile(_ path: String) throws -> String {
    try String(contentsOfFile: path, encoding: .utf8)
}

/// Leaves a stale socket file at `path`: a socket bound there and closed
/// without removing its file, as a crashed server leaves it.
func makeStaleSocketFile(atPath path: String) throws {
    let listener = try StreamListener.bind(to: UnixAddress(path: path), options: BindOptions(removeOnClose: false))
    try listener.close()
    #expect(fileIdentity(atPath: path)?.isSocket == true, "stale socket file at \(path)")
}

// MARK: Descriptors

/// The numbers of the descriptors open in this process, from /proc/self/fd
/// (without the one used to list the directory).
func openDescriptors() -> Set<CInt> {
    guard let directory = opendir("/proc/self/fd") else { return [] }
    defer { closedir(directory) }
    let own = dirfd(directory)
    var result: Set<CInt> = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        if let fd = CInt(name), fd != own { result.insert(fd) }
    }
    return result
}

/// What /proc/self/fd says a descriptor refers to, e.g. `socket:[1234]`.
func descriptorTarget(_ fd: CInt) -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    let count = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
    guard count >= 0 else { return "?" }
    return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Whether `fd` is open and has FD_CLOEXEC set.
func isCloseOnExec(_ fd: CInt) -> Bool {
    let flags = fcntl(fd, F_GETFD)
    return flags != -1 && flags & FD_CLOEXEC != 0
}

// MARK: Background threads

/// Runs `body` on a new thread (not one of Swift concurrency's), so that it can
/// block in a socket call while the test goes on; `join` waits for its result.
final class BackgroundThread<T: Sendable>: Sendable {
    private let outcome = Mutex<Result<T, any Error>?>(nil)
    private let finished = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () throws -> T) {
        let thread = Thread { [self] in
            let result = Result { try body() }
            outcome.withLock { $0 = result }
            finished.signal()
        }
        thread.start()
    }

    struct StillRunning: Error, CustomStringConvertible {
        var description: String { "the background thread did not finish in time" }
    }

    /// Waits for the thread and returns its value, or rethrows its error.
    func join(timeout: Duration = .seconds(30)) throws -> T {
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        guard finished.wait(timeout: .now() + seconds) == .success else { throw StillRunning() }
        finished.signal()  // a second join returns at once
        return try outcome.withLock { $0! }.get()
    }
}

/// The upper bound for an operation that must end (a timeout, a cancel, a
/// close) rather than wait forever. It proves that it ends, not how fast: on
/// a loaded 2-core machine an "instant" cancel has taken over 5 s.
let endsRatherThanHangs = Duration.seconds(60)

/// Sleeps the calling thread, for giving another thread time to block.
func pause(_ duration: Duration) {
    let microseconds = duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000
    usleep(useconds_t(microseconds))
}

// MARK: Errors

/// Runs `body`, which must fail with a ``SocketError``, and returns the error;
/// nil (and a recorded issue) if it succeeded or failed otherwise.
func socketError<R>(
    _ body: () throws -> R, sourceLocation: SourceLocation = #_sourceLocation
) -> SocketError? {
    do {
        _ = try body()
        Issue.record("expected a SocketError, but the call succeeded", sourceLocation: sourceLocation)
        return nil
    } catch let error as SocketError {
        return error
    } catch {
        Issue.record("expected a SocketError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// Runs `body` and returns its ``SocketError`` if it fails, nil if it succeeds.
func failure(of body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) -> SocketError? {
    do {
        try body()
        return nil
    } catch let error as SocketError {
        return error
    } catch {
        Issue.record("expected a SocketError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

// MARK: Byte patterns

/// Deterministic, non-repeating bytes (xorshift64*), for checking that what
/// arrives is exactly what was sent.
func patternBytes(count: Int, seed: UInt64) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { fillPattern($0, seed: seed) }
    return bytes
}

func fillPattern(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt64) {
    var state = seed | 1
    let words = buffer.count / 8
    guard let base = buffer.baseAddress else { return }
    for index in 0..<words {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        base.storeBytes(of: state &* 0x2545_F491_4F6C_DD1D, toByteOffset: index &* 8, as: UInt64.self)
    }
    for index in (words * 8)..<buffer.count {
        buffer[index] = UInt8(truncatingIfNeeded: index &* 31 &+ 7)
    }
}

// MARK: Child processes

/// Some checks need a process of their own: a descriptor count that no other
/// test disturbs, or a signal disposition no other test changed (the `uds`
/// tests in this same binary ignore SIGPIPE). Such a check is a test that is
/// enabled only when `childTestVariable` names it; `runTestInChildProcess`
/// runs this test binary again with a filter that selects that one test.
let childTestVariable = "UDSKIT_TEST_CHILD"
/// Where the child test writes its findings, `key=value` per line.
let childResultVariable = "UDSKIT_TEST_CHILD_RESULT"

/// Whether this process is a child started to run the test `name`.
func isChildProcess(for name: String) -> Bool {
    ProcessInfo.processInfo.environment[childTestVariable] == name
}

/// Writes the child test's findings for the parent to read.
func writeChildResult(_ fields: KeyValuePairs<String, String>) throws {
    guard let path = ProcessInfo.processInfo.environment[childResultVariable] else { return }
    let text = fields.map { "\($0.key)=\($0.value)\n" }.joined()
    try text.write(toFile: path, atomically: true, encoding: .utf8)
}

struct ChildOutcome {
    /// How the child ended: `.exit` or `.uncaughtSignal`, with the status or signal number.
    var reason: Process.TerminationReason
    var status: Int32
    /// What it printed.
    var output: String
    /// The `key=value` lines it wrote with `writeChildResult`; nil if it wrote none
    /// (the filter matched no test, say).
    var result: [String: String]?
}

/// Runs the test `name` (a test function's name, unique in this target) in a
/// new process of this test binary, and waits at most `timeout` for it.
/// Async, and it waits without holding a thread: a test that blocked a
/// thread of the cooperative pool for the seconds a child runs (two of them,
/// on two cores) stalled every async test in the process meanwhile, past
/// their timeouts. Started with posix_spawn: see ``SpawnedProcess``.
func runTestInChildProcess(
    named name: String, in directory: TemporaryDirectory, timeout: Duration = .seconds(120)
) async throws -> ChildOutcome {
    let resultPath = directory.path("\(name).result")
    let logPath = directory.path("\(name).log")
    let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")

    var environment = ProcessInfo.processInfo.environment
    environment[childTestVariable] = name
    environment[childResultVariable] = resultPath
    let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard log >= 0 else { throw POSIXFailure(call: "open \(logPath)", errno: errno) }
    let nothing = open("/dev/null", O_RDONLY | O_CLOEXEC)
    defer {
        close(log)
        close(nothing)
    }
    let child = try SpawnedProcess(
        executable: executable, arguments: ["--testing-library", "swift-testing", "--filter", name],
        environment: environment, standardInput: nothing, standardOutput: log, standardError: log)
    var termination = await child.waitForExit(timeout: timeout)
    if termination == nil {
        child.signal(SIGKILL)
        termination = await child.waitForExit(timeout: endsRatherThanHangs)
        Issue.record("the child process running \(name) did not finish within \(timeout)")
    }
    let output = (try? readFile(logPath)) ?? ""
    let result = (try? readFile(resultPath)).map { text in
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return fields
    }
    switch termination {
    case .exited(let status)?:
        return ChildOutcome(reason: .exit, status: status, output: output, result: result)
    case .signaled(let signal)?:
        return ChildOutcome(reason: .uncaughtSignal, status: signal, output: output, result: result)
    case nil:
        return ChildOutcome(reason: .uncaughtSignal, status: SIGKILL, output: output, result: result)
    }
}

