import ArgumentParser
import Foundation
import Synchronization
import SystemPackage
import UDSKit

// The plumbing `connect`, `listen` and `relay` share: standard input and
// output as streams, copying with a fixed buffer (a slow reader holds the
// writer back; nothing queues without bound), and half-close.

/// The size of the one buffer each direction of a copy uses.
let copyBufferSize = 65536

/// A failure on standard input or output, worded like a ``SocketError``:
/// `write(stdout): broken pipe`.
struct StandardStreamError: Error, CustomStringConvertible {
    let operation: String
    let stream: String
    let errno: Errno
    var description: String { "\(operation)(\(stream)): \(errno.description.lowercasedFirstLetter)" }
}

extension String {
    var lowercasedFirstLetter: String {
        guard let first = first, first.isUppercase else { return self }
        if let second = dropFirst().first, second.isUppercase || !second.isLetter { return self }
        return first.lowercased() + dropFirst()
    }
}

/// Standard input and output, as one side of a copy.
enum StandardStreams {
    static func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        do {
            return try FileDescriptor.standardInput.read(into: buffer)
        } catch let errno as Errno {
            throw StandardStreamError(operation: "read", stream: "stdin", errno: errno)
        }
    }

    static func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        do {
            _ = try FileDescriptor.standardOutput.writeAll(buffer)
        } catch let errno as Errno {
            throw StandardStreamError(operation: "write", stream: "stdout", errno: errno)
        }
    }

    /// Ends standard output: whoever reads it sees end-of-file. Descriptor 1
    /// is pointed at /dev/null rather than closed, so it is never reused by a
    /// socket that later output would then go to.
    static func endOutput() {
        guard let null = try? FileDescriptor.open("/dev/null", .writeOnly, options: [.closeOnExec]) else {
            try? FileDescriptor.standardOutput.close()
            return
        }
        _ = try? null.duplicate(as: .standardOutput)
        try? null.close()
    }
}

/// Reads standard input as chunks, or as lines (without their newline) for
/// message sockets, where each line is one message. A last line without a
/// newline is still a message.
final class InputReader {
    private let lines: Bool
    private var pending: [UInt8] = []
    private var ended = false
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: copyBufferSize, alignment: 1)

    init(lines: Bool) {
        self.lines = lines
    }

    deinit { buffer.deallocate() }

    /// The next chunk or line; nil at the end of input.
    func next() throws -> [UInt8]? {
        while true {
            if lines, let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                return line
            }
            if ended {
                guard !pending.isEmpty else { return nil }
                defer { pending = [] }
                return pending
            }
            let count = try StandardStreams.read(into: buffer)
            if count == 0 {
                ended = true
                continue
            }
            if !lines { return Array(buffer[..<count]) }
            pending += buffer[..<count]
        }
    }
}

/// A connected socket as `connect` and `listen` use it: standard input goes
/// in (as a byte stream, or one message per line), what arrives goes to
/// standard output.
protocol Session: Sendable {
    /// Sends one chunk, or one message.
    func deliver(_ bytes: [UInt8]) throws
    /// Standard input has ended: half-close, so the peer reads end-of-stream.
    func finishInput()
    /// Copies what the peer sends to standard output until it closes (each
    /// message followed by a newline).
    func copyToStandardOutput() throws
    func close()
}

struct StreamSession: Session {
    let connection: StreamSocket
    var tap: DumpTap? = nil

    func deliver(_ bytes: [UInt8]) throws {
        tap?.record(.forward, bytes)
        try connection.writeAll(bytes)
    }
    func finishInput() { try? connection.shutdown(.write) }

    func copyToStandardOutput() throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: copyBufferSize, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let count = try connection.read(into: buffer)
            if count == 0 { return }
            tap?.record(.backward, UnsafeRawBufferPointer(rebasing: buffer[..<count]))
            try StandardStreams.writeAll(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        }
    }

    func close() { try? connection.close() }
}

struct SeqpacketSession: Session {
    let socket: SeqpacketSocket
    let peer: String
    var tap: DumpTap? = nil

    func deliver(_ bytes: [UInt8]) throws {
        tap?.record(.forward, bytes)
        try socket.send(bytes)
    }
    func finishInput() { try? socket.shutdown(.write) }

    func copyToStandardOutput() throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumMessageSize, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let receipt = try socket.receive(into: buffer)
            if receipt.count == 0 && !receipt.isTruncated { return }
            if receipt.isTruncated {
                report(SocketError("recvmsg", address: peer,
                    code: .messageTruncated(length: receipt.fullLength, capacity: maximumMessageSize)))
            }
            tap?.record(.backward, UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count]))
            var line = Array(buffer[..<receipt.count])
            line.append(UInt8(ascii: "\n"))
            try line.withUnsafeBytes { try StandardStreams.writeAll($0) }
        }
    }

    func close() { try? socket.close() }
}

/// The largest message `uds` receives whole; longer ones are reported as truncated.
let maximumMessageSize = 262_144

/// Hands standard input to one session after another (`listen --keep-open`):
/// one reader thread for the life of the command, so no input is read on
/// behalf of a connection that has ended. Input read while no connection is
/// open waits for the next one (and holds the reader back meanwhile).
final class InputRouter: Sendable {
    private struct State {
        var current: (id: Int, session: any Session)?
        var ended = false
        var held: [UInt8]?
        var failures: [Int: any Error] = [:]
    }

    private let state = Mutex(State())
    private let wakeup = DispatchSemaphore(value: 0)
    private let lines: Bool

    init(lines: Bool) {
        self.lines = lines
    }

    /// Starts the reader thread.
    func start() {
        Thread.detachNewThread { [self] in run() }
    }

    /// Makes `session` the one that gets input; if input has ended, it is
    /// half-closed at once.
    func attach(_ session: any Session, id: Int) {
        let ended = state.withLock { state in
            state.current = (id, session)
            return state.ended
        }
        if ended { session.finishInput() }
        wakeup.signal()
    }

    /// Stops giving input to session `id`; returns the error delivering to it
    /// failed with, if it did.
    @discardableResult
    func detach(_ id: Int) -> (any Error)? {
        state.withLock { state in
            if state.current?.id == id { state.current = nil }
            return state.failures.removeValue(forKey: id)
        }
    }

    /// After the peer of session `id` ended its stream: waits until standard
    /// input has ended (and so was all delivered, and the session
    /// half-closed), delivery to the session failed, or `timeout` seconds
    /// passed; like socat's `-t`.
    func waitForInput(_ id: Int, timeout: Double) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline {
            let settled = state.withLock { $0.ended || $0.failures[id] != nil }
            if settled { return }
            Thread.sleep(forTimeInterval: 0.01)
        }
    }

    private func run() {
        let reader = InputReader(lines: lines)
        while true {
            let chunk: [UInt8]?
            do {
                chunk = try reader.next()
            } catch {
                report(error)
                chunk = nil
            }
            guard let chunk else {
                let current = state.withLock { state in
                    state.ended = true
                    return state.current?.session
                }
                current?.finishInput()
                return
            }
            deliver(chunk)
        }
    }

    /// Delivers `chunk` to the current session, waiting for one if need be;
    /// a session that fails is dropped and the chunk goes to the next.
    private func deliver(_ chunk: [UInt8]) {
        while true {
            guard let (id, session) = state.withLock({ $0.current }) else {
                wakeup.wait()
                continue
            }
            do {
                try session.deliver(chunk)
                return
            } catch {
                state.withLock { state in
                    state.failures[id] = error
                    if state.current?.id == id { state.current = nil }
                }
            }
        }
    }
}

/// Parses an endpoint (`PATH`, `@name`, `unix:PATH`, `tcp:HOST:PORT`),
/// turning a bad one into a one-line error.
func parseEndpoint(_ text: String) throws -> Endpoint {
    do {
        return try Endpoint(text)
    } catch {
        report(error)
        throw ExitCode.failure
    }
}

/// The Unix address of `endpoint`, or a one-line error saying `command`
/// needs one.
func unixAddress(of endpoint: Endpoint, for what: String) throws -> UnixAddress {
    guard let address = endpoint.unixAddress else {
        Console.standardError.line("uds: \(endpoint): \(what) needs a Unix socket address, not TCP")
        throw ExitCode.failure
    }
    return address
}

/// `pid=1234 uid=1000 gid=1000 command=python3`; the command on Linux only.
func describeCredentials(_ credentials: PeerCredentials) -> String {
    var text = credentials.description
    if let pid = credentials.processID, let command = commandName(of: pid) {
        text += " command=" + command
    }
    return text
}

/// The command name of process `pid` (Linux `/proc/PID/comm`), or nil.
func commandName(of pid: Int32) -> String? {
    #if os(Linux)
    guard let name = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8) else { return nil }
    return name.trimmingCharacters(in: .newlines)
    #else
    return nil
    #endif
}

/// Closes `close` and exits at SIGINT or SIGTERM: a listening command
/// removes its socket file on the way out.
func exitOnShutdownSignals(_ close: @escaping @Sendable () -> Void) {
    ShutdownSignals.install { _ in
        close()
        exit(0)
    }
}

/// For a failure that may only be the shutdown closing the socket under a
/// blocked call: once a signal arrived, this thread waits for the signal
/// handler to finish exiting, instead of reporting the failure.
func yieldToShutdown() {
    guard ShutdownSignals.received.load(ordering: .acquiring) else { return }
    while true { Thread.sleep(forTimeInterval: 3600) }
}
