#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import Testing

// Helpers for the toolkit tests (connect, listen, relay, send/recv, ls,
// probe, stat): plain sockets the test itself holds, over Unix paths and TCP
// on the loopback addresses only, with every blocking call bounded by a
// socket timeout; work on threads of its own, awaited without blocking
// Swift's cooperative pool; and a large pseudo-random pattern.

/// How long any single socket call in these tests may block.
let socketCallTimeout: Duration = .seconds(30)

struct SocketFailure: Error, CustomStringConvertible {
    let description: String
    init(_ call: String, _ code: CInt = errno) {
        description = "\(call): \(String(cString: strerror(code)))"
    }
    init(message: String) { description = message }
}

/// A socket the test holds: a plain descriptor, closed once.
final class TestSocket: Sendable {
    let fd: CInt
    private let closed = Atomic<Bool>(false)

    private init(fd: CInt) {
        self.fd = fd
        setTimeouts(socketCallTimeout)
    }

    deinit { close() }

    func close() {
        if !closed.exchange(true, ordering: .acquiringAndReleasing) { _ = Glibc.close(fd) }
    }

    /// Bounds every blocking read and write.
    func setTimeouts(_ duration: Duration) {
        var time = timeval(tv_sec: Int(duration.components.seconds), tv_usec: Int(duration.components.attoseconds / 1_000_000_000_000))
        if time.tv_sec == 0 && time.tv_usec == 0 { time.tv_usec = 1 }
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
    }

    // MARK: Making sockets

    private static func make(_ family: CInt, _ type: CInt = CInt(SOCK_STREAM.rawValue)) throws -> TestSocket {
        let fd = socket(family, type | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketFailure("socket") }
        return TestSocket(fd: fd)
    }

    /// A Unix stream socket connected to `path`.
    static func connect(unix path: String) throws -> TestSocket {
        let socket = try make(AF_UNIX)
        let result = withUnixAddress(path) { Glibc.connect(socket.fd, $0, $1) }
        guard result == 0 else { throw SocketFailure("connect(\(path))") }
        return socket
    }

    /// A Unix stream listener at `path`.
    static func listen(unix path: String) throws -> TestSocket {
        let socket = try make(AF_UNIX)
        guard withUnixAddress(path, { bind(socket.fd, $0, $1) }) == 0 else { throw SocketFailure("bind(\(path))") }
        guard Glibc.listen(socket.fd, 16) == 0 else { throw SocketFailure("listen") }
        return socket
    }

    /// A TCP socket connected to a loopback port (`::1` with `ipv6`).
    static func connect(tcpPort port: UInt16, ipv6: Bool = false) throws -> TestSocket {
        let socket = try make(ipv6 ? AF_INET6 : AF_INET)
        let result = withLoopback(port: port, ipv6: ipv6) { Glibc.connect(socket.fd, $0, $1) }
        guard result == 0 else { throw SocketFailure("connect(\(ipv6 ? "[::1]" : "127.0.0.1"):\(port))") }
        return socket
    }

    /// A TCP listener on a free loopback port, and the port.
    static func listenTCP(ipv6: Bool = false) throws -> (TestSocket, UInt16) {
        let socket = try make(ipv6 ? AF_INET6 : AF_INET)
        guard withLoopback(port: 0, ipv6: ipv6, { bind(socket.fd, $0, $1) }) == 0 else { throw SocketFailure("bind") }
        guard Glibc.listen(socket.fd, 16) == 0 else { throw SocketFailure("listen") }
        var storage = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket.fd, $0, &length) }
        }
        // sin_port and sin6_port sit at the same offset.
        return (socket, UInt16(bigEndian: storage.sin6_port))
    }

    // MARK: Using them

    /// Accepts one connection, waiting at most `timeout`; nil if none came.
    func accept(timeout: Duration = socketCallTimeout) throws -> TestSocket? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = CInt(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let ready = poll(&entry, 1, milliseconds)
        if ready < 0 { throw SocketFailure("poll") }
        if ready == 0 { return nil }
        // accept4 needs _GNU_SOURCE, which Glibc is not imported with; mark
        // the connection close-on-exec at once, so children do not inherit it.
        let accepted = Glibc.accept(fd, nil, nil)
        guard accepted >= 0 else { throw SocketFailure("accept") }
        _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
        return TestSocket(fd: accepted)
    }

    func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let written = send(fd, bytes.baseAddress! + offset, bytes.count - offset, CInt(MSG_NOSIGNAL))
            if written < 0 {
                if errno == EINTR { continue }
                throw SocketFailure("send")
            }
            offset += written
        }
    }

    func writeAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll($0) }
    }

    func write(_ text: String) throws { try writeAll(Array(text.utf8)) }

    /// One read of at most `count` bytes; empty at the end of the stream.
    func read(upTo count: Int = 65536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        while true {
            let received = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if received >= 0 { return Array(buffer[..<received]) }
            if errno == EINTR { continue }
            throw SocketFailure("recv")
        }
    }

    /// Everything up to the end of the stream.
    func readToEnd() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let chunk = try read()
            if chunk.isEmpty { return all }
            all += chunk
        }
    }

    /// Reads until the end of the stream, checking every byte against
    /// `pattern` starting at `offset` (cyclically); returns how many arrived.
    /// Fails at the first wrong byte, naming its position.
    func readVerifying(_ pattern: Pattern, offset: Int) throws -> Int {
        var position = 0
        var buffer = [UInt8](repeating: 0, count: 262_144)
        while true {
            let received = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if received < 0 {
                if errno == EINTR { continue }
                throw SocketFailure("recv after \(position) bytes")
            }
            if received == 0 { return position }
            if let bad = pattern.firstMismatch(buffer[..<received], at: offset + position) {
                throw SocketFailure(message: "byte \(position + bad) differs from what was sent")
            }
            position += received
        }
    }

    func shutdownWrite() throws {
        guard shutdown(fd, CInt(SHUT_WR)) == 0 else { throw SocketFailure("shutdown") }
    }
}

private func withUnixAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    var storage = sockaddr_un()
    storage.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8) + [0]
    precondition(bytes.count <= MemoryLayout.size(ofValue: storage.sun_path), "test path too long: \(path)")
    withUnsafeMutableBytes(of: &storage.sun_path) { $0.copyBytes(from: bytes) }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
    return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
}

/// 127.0.0.1 or ::1 and `port`: the only addresses these tests use.
private func withLoopback<R>(port: UInt16, ipv6: Bool, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    if ipv6 {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        address.sin6_addr = in6addr_loopback
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

// MARK: - A large pattern

/// Pseudo-random bytes (xorshift), made once and shared: a transfer sends
/// them from some offset on, wrapping around, and the receiver checks them.
final class Pattern: Sendable {
    static let shared = Pattern(count: 64 << 20)

    let bytes: [UInt8]

    init(count: Int) {
        var words = [UInt64](repeating: 0, count: count / 8)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for index in words.indices {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            words[index] = state
        }
        bytes = words.withUnsafeBytes { Array($0) }
    }

    /// Sends `count` bytes of the pattern from `offset` on, in chunks.
    func send(_ count: Int, from offset: Int, over socket: TestSocket) throws {
        var sent = 0
        try bytes.withUnsafeBytes { all in
            while sent < count {
                let start = (offset + sent) % all.count
                let length = min(count - sent, all.count - start, 1 << 20)
                try socket.writeAll(UnsafeRawBufferPointer(rebasing: all[start..<(start + length)]))
                sent += length
            }
        }
    }

    /// The index within `chunk` of its first byte that differs from the
    /// pattern at `position`, or nil.
    func firstMismatch(_ chunk: ArraySlice<UInt8>, at position: Int) -> Int? {
        bytes.withUnsafeBytes { all in
            chunk.withUnsafeBytes { received in
                var done = 0
                while done < received.count {
                    let start = (position + done) % all.count
                    let length = min(received.count - done, all.count - start)
                    if memcmp(received.baseAddress! + done, all.baseAddress! + start, length) != 0 {
                        for index in 0..<length where received[done + index] != all[start + index] {
                            return done + index
                        }
                    }
                    done += length
                }
                return nil
            }
        }
    }
}

// MARK: - Threads

/// Runs blocking work on a thread of its own and awaits its result without
/// holding one of Swift concurrency's few threads.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try body() })
        }
    }
}

/// Work started on a thread now, awaited later.
final class Background<T: Sendable>: Sendable {
    private let outcome = Mutex<Result<T, any Error>?>(nil)

    init(_ body: @escaping @Sendable () throws -> T) {
        Thread.detachNewThread { [self] in
            let result = Result { try body() }
            outcome.withLock { $0 = result }
        }
    }

    var isFinished: Bool { outcome.withLock { $0 != nil } }

    /// Its value, waiting at most `timeout`.
    func value(timeout: Duration = .seconds(60)) async throws -> T {
        guard await poll(timeout: timeout, every: .milliseconds(10), { isFinished }) else {
            throw SetupFailure("background work did not finish within \(timeout)")
        }
        return try outcome.withLock { $0! }.get()
    }
}

// MARK: - uds children

extension Child {
    /// Waits for `uds: listening on ENDPOINT` on standard error and returns ENDPOINT.
    func listeningEndpoint(timeout: Duration = defaultTimeout) async throws -> String {
        let prefix = "uds: listening on "
        try await waitForStderr(timeout: timeout, "the line \"\(prefix)...\"") { text in
            splitLines(text).contains { $0.hasPrefix(prefix) }
        }
        return String(stderr.lines.first { $0.hasPrefix(prefix) }!.dropFirst(prefix.count))
    }

    /// The TCP port of the endpoint `uds` reported it listens on.
    func listeningPort(timeout: Duration = defaultTimeout) async throws -> UInt16 {
        let endpoint = try await listeningEndpoint(timeout: timeout)
        guard endpoint.hasPrefix("tcp:"), let colon = endpoint.lastIndex(of: ":"),
            let port = UInt16(endpoint[endpoint.index(after: colon)...]), port != 0
        else { throw SetupFailure("\(name) listens on \(endpoint), not on a TCP port.\n\(transcript)") }
        return port
    }
}

extension Sandbox {
    /// Starts a Python listener at `address` (a path relative to the sandbox,
    /// or `@name`) that accepts nothing and sleeps; returns once it listens.
    func pythonListener(_ address: String, type: String = "SOCK_STREAM") async throws -> Child {
        let script = """
            import socket, sys, time
            name = sys.argv[1]
            s = socket.socket(socket.AF_UNIX, socket.\(type))
            s.bind("\\0" + name[1:] if name.startswith("@") else name)
            if socket.\(type) != socket.SOCK_DGRAM:
                s.listen(16)
            print("ready", flush=True)
            time.sleep(120)
            """
        let child = try spawn("python listener \(address)", try Tools.python(), ["-c", script, address])
        try await child.waitForLine("ready")
        return child
    }

    /// Leaves a stale socket file at `path`: Python binds it and exits.
    func makeStaleSocket(_ path: String) async throws {
        let script = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])"
        let python = try await run(try spawn("python bind", try Tools.python(), ["-c", script, path]))
        guard python.termination == .exited(0), fileType(resolve(path)) == "s" else {
            throw SetupFailure("could not leave a stale socket at \(path).\n\(python.transcript)")
        }
    }

    /// Runs `uds ARGUMENTS` to its end.
    func runUDS(_ arguments: [String], input: [UInt8]? = nil, timeout: Duration = defaultTimeout) async throws -> Child {
        let child = try uds(arguments, withInput: input != nil)
        if let input {
            try child.write(input)
            child.closeInput()
        }
        return try await run(child, timeout: timeout)
    }
}
