#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import SystemPackage
import UDSKit

// The relay's `exec:CMD` side, like socat's EXEC: each connection starts
// `/bin/sh -c CMD` with one end of a socket pair as its standard input and
// output, so the relay's half-close reaches it as end-of-file on its input.

/// A running command as one side of a relay.
struct ExecStream: ByteStream {
    let socket: StreamSocket
    let processID: pid_t

    /// Starts `command`; its standard error stays uds's.
    static func start(_ command: String) throws(SocketError) -> ExecStream {
        let (mine, theirs) = try StreamSocket.makePair()
        defer { try? theirs.close() }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, theirs.descriptor.rawValue, 0)
        posix_spawn_file_actions_adddup2(&actions, theirs.descriptor.rawValue, 1)
        // The relay ignores SIGPIPE when it splices; the command must not inherit that.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))

        let arguments: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", command].map { (text: String) in strdup(text) } + [nil]
        let environment: [UnsafeMutablePointer<CChar>?] =
            ProcessInfo.processInfo.environment.map { (key, value) in strdup(key + "=" + value) } + [nil]
        defer {
            arguments.forEach { free($0) }
            environment.forEach { free($0) }
        }
        var processID: pid_t = 0
        let result = posix_spawn(&processID, "/bin/sh", &actions, &attributes, arguments, environment)
        guard result == 0 else {
            try? mine.close()
            throw SocketError("exec", address: command, code: .system(Errno(rawValue: result)))
        }
        return ExecStream(socket: mine, processID: processID)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { try socket.read(into: buffer) }
    func writeAll(_ buffer: UnsafeRawBufferPointer) throws { try socket.writeAll(buffer) }
    func closeWrite() { try? socket.shutdown(.write) }

    /// Closes the command's input and output and reaps it once it exits; it
    /// is not killed (like a pipeline's command, it ends on end-of-file).
    func close() {
        try? socket.close()
        let processID = self.processID
        var status: CInt = 0
        if waitpid(processID, &status, WNOHANG) == 0 {
            Thread.detachNewThread {
                var status: CInt = 0
                while waitpid(processID, &status, 0) == -1 && errno == EINTR {}
            }
        }
    }
}
