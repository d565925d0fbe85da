/// Who is on the other end of a Unix socket, as the kernel vouches for it.
///
/// For a connection these are the peer's credentials when it called `connect`
/// or `listen` (Linux `SO_PEERCRED`; macOS `getpeereid` and `LOCAL_PEERPID`).
/// For a datagram they are the sender's at the time of sending (Linux
/// `SCM_CREDENTIALS`, see ``DatagramSocket/setReceivesCredentials(_:)``).
public struct PeerCredentials: Hashable, Sendable, CustomStringConvertible {
    /// The process ID; `nil` where the platform cannot tell.
    public var processID: Int32?
    /// The effective user ID.
    public var userID: UInt32
    /// The primary group ID. Supplementary groups are not reported.
    public var groupID: UInt32

    /// Credentials from their parts, for tests and for access-policy checks
    /// of one's own.
    public init(processID: Int32?, userID: UInt32, groupID: UInt32) {
        self.processID = processID
        self.userID = userID
        self.groupID = groupID
    }

    /// `pid=1234 uid=1000 gid=1000`
    public var description: String {
        "pid=\(processID.map(String.init) ?? "?") uid=\(userID) gid=\(groupID)"
    }
}

/// Which peers a listener accepts, judged by their credentials.
///
/// A refused peer's connection is closed at once, before ``StreamListener/accept()``
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

    /// Admits peers whose user ID is in `userIDs` or whose primary group ID is in `groupIDs`.
    public static func users(
        _ userIDs: Set<UInt32>, groups groupIDs: Set<UInt32> = [],
        onRefusal: (@Sendable (PeerCredentials) -> Void)? = nil
    ) -> AccessPolicy {
        AccessPolicy({ userIDs.contains($0.userID) || groupIDs.contains($0.groupID) }, onRefusal: onRefusal)
    }

    /// Admits peers whose primary group ID is in `groupIDs`.
    public static func groups(
        _ groupIDs: Set<UInt32>, onRefusal: (@Sendable (PeerCredentials) -> Void)? = nil
    ) -> AccessPolicy {
        users([], groups: groupIDs, onRefusal: onRefusal)
    }
}
