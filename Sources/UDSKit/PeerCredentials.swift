import SystemPackage

/// Who is on the other end of a Unix socket, as the kernel vouches for it.
///
/// For a connection these are the peer's credentials when it called `connect`
/// or `listen` (Linux `SO_PEERCRED`; macOS `getpeereid` and `LOCAL_PEERPID`).
/// For a datagram they are the sender's at the time of sending (Linux
/// `SCM_CREDENTIALS`, see ``DatagramSocket/setReceivesCredentials(_:)``).
public struct PeerCredentials: Hashable, Sendable, CustomStringConvertible {
    /// The process ID; `nil` where the platform cannot tell. A pid can be
    /// reused once the process exits: ``StreamSocket/peerProcess()`` gives a
    /// handle that cannot be confused with a later process.
    public var processID: Int32?
    /// The effective user ID.
    public var userID: UInt32
    /// The primary group ID.
    public var groupID: UInt32
    /// The supplementary groups, where the kernel reports them (Linux
    /// `SO_PEERGROUPS`, for connections); `nil` otherwise.
    public var supplementaryGroups: [UInt32]?
    /// The security label (Linux `SO_PEERSEC`: SELinux, AppArmor, Smack);
    /// `nil` without a security module, or for datagrams.
    public var securityLabel: String?

    /// Credentials from their parts, for tests and for access-policy checks
    /// of one's own.
    public init(
        processID: Int32?, userID: UInt32, groupID: UInt32, supplementaryGroups: [UInt32]? = nil,
        securityLabel: String? = nil
    ) {
        self.processID = processID
        self.userID = userID
        self.groupID = groupID
        self.supplementaryGroups = supplementaryGroups
        self.securityLabel = securityLabel
    }

    /// Whether `group` is the primary group or one of the supplementary ones.
    public func isMember(of group: UInt32) -> Bool {
        groupID == group || supplementaryGroups?.contains(group) == true
    }

    /// `pid=1234 uid=1000 gid=1000`, then `groups=27,100` and `label=...` when known.
    public var description: String {
        var text = "pid=\(processID.map(String.init) ?? "?") uid=\(userID) gid=\(groupID)"
        if let supplementaryGroups, !supplementaryGroups.isEmpty {
            text += " groups=" + supplementaryGroups.map(String.init).joined(separator: ",")
        }
        if let securityLabel { text += " label=\(securityLabel)" }
        return text
    }
}

/// Which peers a listener accepts, judged by their credentials.
///
/// A refused peer's connection is closed at once, before ``StreamListener/accept(timeout:)``
/// returns, and the policy's `onRefusal` handler is told who it was.
///
///     let policy = AccessPolicy.users([0, 1000]) { refused in log("refused \(refused)") }
///
/// Abstract names have no file permissions; a policy is how to protect them.
public struct AccessPolicy: Sendable {
    /// `nil` admits everyone without looking up credentials.
    let admits: (@Sendable (PeerCredentials) -> Bool)?
    let onRefusal: (@Sendable (PeerCredentials) -> Void)?

    /// Admits peers for which `predicate` is true.
    public init(
        _ predicate: @escaping @Sendable (PeerCredentials) -> Bool,
        onRefusal: (@Sendable (PeerCredentials) -> Void)? = nil
    ) {
        self.admits = predicate
        self.onRefusal = onRefusal
    }

    /// Admits everyone: no check, and no credential lookup per connection.
    public static let everyone = AccessPolicy(admits: nil, onRefusal: nil)

    private init(admits: (@Sendable (PeerCredentials) -> Bool)?, onRefusal: (@Sendable (PeerCredentials) -> Void)?) {
        self.admits = admits
        self.onRefusal = onRefusal
    }

    /// Admits peers whose user ID is in `userIDs` or who belong to a group in
    /// `groupIDs`, as primary or supplementary group (the usual way into a
    /// `docker`-style group; supplementary groups are known on Linux).
    public static func users(
        _ userIDs: Set<UInt32>, groups groupIDs: Set<UInt32> = [],
        onRefusal: (@Sendable (PeerCredentials) -> Void)? = nil
    ) -> AccessPolicy {
        AccessPolicy({ credentials in
            userIDs.contains(credentials.userID) || groupIDs.contains { credentials.isMember(of: $0) }
        }, onRefusal: onRefusal)
    }

    /// Admits peers that belong to a group in `groupIDs`, as primary or supplementary group.
    public static func groups(
        _ groupIDs: Set<UInt32>, onRefusal: (@Sendable (PeerCredentials) -> Void)? = nil
    ) -> AccessPolicy {
        users([], groups: groupIDs, onRefusal: onRefusal)
    }
}

/// The process on the other end of a connection, held by a pidfd (Linux
/// `SO_PEERPIDFD`, 6.5+): unlike a pid, it names that very process, never a
/// later one that reused the number. Closes its descriptor when it goes away.
public final class PeerProcess: Sendable {
    /// The pidfd. Owned here: use it (with `pidfd_send_signal`, `poll` for the
    /// process's exit), do not close it.
    public let descriptor: FileDescriptor
    /// The process ID the pidfd refers to, as the kernel reports it.
    public let processID: Int32

    init(descriptor: FileDescriptor, processID: Int32) {
        self.descriptor = descriptor
        self.processID = processID
    }

    deinit { _ = Sys.close(descriptor.rawValue) }

    /// Whether the process still runs.
    public var isRunning: Bool { Sys.processIsAlive(pidfd: descriptor.rawValue) }

    /// The command name (`/proc/PID/comm`), read only while the pidfd shows the
    /// process still runs, so that it is this process's and not a successor's;
    /// `nil` once it has exited.
    public var commandName: String? {
        guard isRunning, let name = Sys.commandName(of: processID), isRunning else { return nil }
        return name
    }
}
