import CChildProcesses
import Glibc
import Synchronization

/// A child process started with posix_spawn, for the tests.
///
/// Foundation's `Process.run()` in this toolchain reads past the end of a
/// buffer while it lists /proc/self/fd (it copies a whole `d_name` out of
/// each directory entry), and with a thousand or more descriptors open, as
/// in a full parallel test run, that crashed the test process now and then.
/// This does what the tests need and nothing more: standard streams, a
/// working directory, the environment, an empty signal mask and default
/// signal actions (threads of the concurrency pool block signals, and the
/// test process ignores SIGPIPE), and no other descriptor inherited.
public final class SpawnedProcess: Sendable {
    public let pid: pid_t
    /// The wait status, once reaped.
    private let reaped = Mutex<CInt?>(nil)

    public enum Termination: Equatable, Sendable, CustomStringConvertible {
        case exited(CInt)
        case signaled(CInt)

        public var description: String {
            switch self {
            case .exited(let status): "exit status \(status)"
            case .signaled(let signal): "killed by signal \(signal)"
            }
        }
    }

    /// Starts `executable` with `arguments`; `standardInput`, `standardOutput`
    /// and `standardError` become its descriptors 0, 1 and 2 (the caller keeps
    /// and closes its own copies). `environment` is the whole environment;
    /// `nil` passes this process's on.
    public init(
        executable: String, arguments: [String], directory: String? = nil, environment: [String: String]? = nil,
        standardInput: CInt, standardOutput: CInt, standardError: CInt
    ) throws(SpawnFailure) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
        posix_spawn_file_actions_adddup2(&actions, standardOutput, 1)
        posix_spawn_file_actions_adddup2(&actions, standardError, 2)
        ccp_spawn_add_close_from(&actions, 3)
        if let directory { ccp_spawn_add_chdir(&actions, directory) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        let environmentLines = environment.map { $0.map { "\($0.key)=\($0.value)" } }
        let envp = environmentLines?.map { strdup($0) }
        defer { envp?.forEach { free($0) } }

        var pid: pid_t = 0
        let result = (argv + [nil]).withUnsafeBufferPointer { arguments in
            if let envp {
                return (envp + [nil]).withUnsafeBufferPointer { environment in
                    posix_spawn(&pid, executable, &actions, &attributes, arguments.baseAddress!, environment.baseAddress!)
                }
            }
            return posix_spawn(&pid, executable, &actions, &attributes, arguments.baseAddress!, environ)
        }
        guard result == 0 else { throw SpawnFailure(executable: executable, errno: result) }
        self.pid = pid
    }

    /// How it ended; nil while it runs. Reaps it the first time it is seen ended.
    public var termination: Termination? {
        let status: CInt? = reaped.withLock { reaped in
            if let reaped { return reaped }
            var status: CInt = 0
            let result = waitpid(pid, &status, WNOHANG)
            guard result == pid else { return nil }
            reaped = status
            return status
        }
        guard let status else { return nil }
        // The <sys/wait.h> macros, which Swift does not import.
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    public var isRunning: Bool { termination == nil }

    /// Sends `signal`, unless it has been reaped (its number may be reused).
    public func signal(_ signal: CInt) {
        reaped.withLock { reaped in
            if reaped == nil { _ = kill(pid, signal) }
        }
    }

    /// Waits for it to end without holding a thread, polling; `nil` if it
    /// still runs after `timeout`.
    public func waitForExit(timeout: Duration) async -> Termination? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let termination { return termination }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return termination
    }
}

public struct SpawnFailure: Error, CustomStringConvertible {
    public let executable: String
    public let errno: CInt

    public var description: String { "posix_spawn \(executable): errno \(errno)" }
}

/// A pipe whose ends are closed on exec.
public func makeCloseOnExecPipe() -> (read: CInt, write: CInt)? {
    var ends: [CInt] = [0, 0]
    guard ccp_pipe_close_on_exec(&ends) == 0 else { return nil }
    return (ends[0], ends[1])
}
