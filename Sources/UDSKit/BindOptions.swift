import Logging
import SystemPackage

/// How a socket takes its name in the filesystem.
///
/// The defaults are safe for servers: a stale socket file left by a crashed
/// server is replaced, a live server's socket never is, a file that is not a
/// socket is never touched, and the socket file is removed again on close.
public struct BindOptions: Sendable {
    /// The mode of the socket file, in force from the moment the path exists
    /// (Linux). `nil` leaves it to the process umask.
    ///
    /// On Linux the mode is set on the socket before `bind`, so the path never
    /// appears with a wider mode than asked for; where the umask would narrow
    /// it, it is widened right after `bind`. On macOS the mode is applied right
    /// after `bind`: keep the socket in a directory only its users can enter.
    public var permissions: FilePermissions?

    /// The owner (user ID) of the socket file; `nil` keeps the process's.
    /// Changing it to another user needs privilege.
    public var owner: UInt32?

    /// The group of the socket file; `nil` keeps the process's. A process may
    /// choose any group it belongs to.
    public var group: UInt32?

    /// Replace a socket file nobody listens on (a connect probe is refused).
    public var replaceStaleSocket: Bool

    /// Remove the socket file on close, if the path still names this socket.
    public var removeOnClose: Bool

    /// The listen backlog, for listeners; `nil` means the system's maximum, `SOMAXCONN`.
    public var backlog: Int?

    /// Listeners: told when `accept` got through a failure it recovers from
    /// (out of descriptors or memory, a peer whose credentials could not be
    /// read). Servers log it; `accept` itself goes on. Called on the
    /// accepting thread: keep it short.
    public var onAcceptRecovery: (@Sendable (AcceptRecoveryEvent) -> Void)?

    /// Listeners: where they log refused peers (notice) and how `accept`
    /// got through failures (warning); `nil`, the default, logs nothing and
    /// costs nothing. Successful accepts and messages are never logged.
    public var logger: Logger?

    /// When an owner or group is set, the socket file is created with owner-only
    /// permissions, handed over, and only then given `permissions` (0660 if
    /// `nil`), so nobody else can connect before it is theirs.
    public init(
        permissions: FilePermissions? = nil,
        owner: UInt32? = nil,
        group: UInt32? = nil,
        replaceStaleSocket: Bool = true,
        removeOnClose: Bool = true,
        backlog: Int? = nil,
        onAcceptRecovery: (@Sendable (AcceptRecoveryEvent) -> Void)? = nil,
        logger: Logger? = nil
    ) {
        self.onAcceptRecovery = onAcceptRecovery
        self.logger = logger
        self.permissions = permissions
        self.owner = owner
        self.group = group
        self.replaceStaleSocket = replaceStaleSocket
        self.removeOnClose = removeOnClose
        self.backlog = backlog
    }
}

/// How a listener got through an `accept` failure without failing the call.
public enum AcceptRecoveryEvent: Sendable, CustomStringConvertible {
    /// Out of descriptors: one pending connection was accepted and closed at
    /// once through the reserve descriptor, so its client is not left waiting.
    case shedConnection(SocketError)
    /// Out of descriptors or memory with nothing to shed: the listener waits
    /// this long before it tries again (the pause grows up to a second).
    case pausing(SocketError, Duration)
    /// A peer's credentials could not be read for the access policy; it was refused.
    case credentialsUnavailable(SocketError)

    /// One line for a log, naming the error and what the listener did.
    /// One line: the failure and what the listener did about it.
    public var description: String {
        switch self {
        case .shedConnection(let error): "\(error); closed a pending connection to keep serving"
        case .pausing(let error, let pause): "\(error); accepting again in \(pause)"
        case .credentialsUnavailable(let error): "\(error); refused the connection"
        }
    }
}
