/// One Unix socket the kernel knows about, from its socket table (Linux).
public struct UnixSocketEntry: Hashable, Sendable {
    /// Where a socket is in its life.
    public enum State: String, Hashable, Sendable {
        /// A stream or seqpacket socket accepting connections.
        case listening
        /// A stream or seqpacket socket whose `connect` has not completed.
        case connecting
        /// A connected stream or seqpacket socket, or a datagram socket
        /// connected to one peer.
        case connected
        /// Neither listening nor connected: a bound datagram socket, or a
        /// stream socket between `bind` and `listen`.
        case unconnected
        /// A connection being closed.
        case disconnecting
    }

    /// `nil` for a type `uds` does not know.
    public var type: UnixSocketType?
    /// Listening, connected, and so on.
    public var state: State
    /// The address the socket is bound to, or ``UnixAddress/unnamed``. An
    /// accepted connection reports its listener's address.
    public var address: UnixAddress
    /// The socket's own inode number, as `/proc/PID/fd` shows it: `socket:[N]`.
    public var socketInode: UInt64
    /// The device and inode of the socket file it created by binding a path:
    /// from the kernel itself (`UDIAG_SHOW_VFS`), or where only
    /// `/proc/net/unix` is available, from the file the bound path names now.
    public var fileDevice: UInt64?
    /// The inode of that socket file; see ``fileDevice``.
    public var fileInode: UInt64?
    /// The processes holding a descriptor of it, where this process may look
    /// (all of them for root; otherwise those of the same user).
    public var processes: [SocketProcess]
    /// The socket inode of the peer it is connected to; nil when unconnected
    /// or where only `/proc/net/unix` is available.
    public var peerInode: UInt64?
    /// What `ss` shows as Recv-Q and Send-Q: bytes queued to read and not yet
    /// read by the peer; for a listener, the connections waiting for accept
    /// and the backlog. Nil where only `/proc/net/unix` is available.
    public var receiveQueue: UInt32?
    public var sendQueue: UInt32?

    /// Makes an entry from its fields, as the table reader does; for tests
    /// and for code that builds its own table.
    public init(
        type: UnixSocketType?, state: State, address: UnixAddress, socketInode: UInt64,
        fileDevice: UInt64? = nil, fileInode: UInt64? = nil, processes: [SocketProcess] = [],
        peerInode: UInt64? = nil, receiveQueue: UInt32? = nil, sendQueue: UInt32? = nil
    ) {
        self.peerInode = peerInode
        self.receiveQueue = receiveQueue
        self.sendQueue = sendQueue
        self.type = type
        self.state = state
        self.address = address
        self.socketInode = socketInode
        self.fileDevice = fileDevice
        self.fileInode = fileInode
        self.processes = processes
    }

    /// Whether this socket bound its address itself, rather than being a
    /// connection accepted from a listener (which reports the listener's
    /// address). A bound datagram socket holds its address in any state:
    /// Linux marks it connected once a peer connects to it (even a probe).
    public var holdsAddress: Bool {
        guard address.kind != .unnamed else { return false }
        return type == .datagram || state == .listening || state == .unconnected
    }

    /// Whether this socket created the file `status` describes.
    public func isBound(to status: FileStatus) -> Bool {
        fileInode == status.inode && fileDevice == status.device
    }
}

/// A process that holds a socket: its ID and command name.
public struct SocketProcess: Hashable, Sendable, CustomStringConvertible {
    /// The process ID.
    public var processID: Int32
    /// The command name, as `/proc/PID/comm` gives it (at most 15 bytes).
    public var command: String

    /// A process with its ID and command name.
    public init(processID: Int32, command: String) {
        self.processID = processID
        self.command = command
    }

    /// `1234/python3`
    public var description: String { "\(processID)/\(command)" }
}

/// The kernel's table of Unix sockets (Linux): what `ss -x` shows, and which
/// processes hold each socket.
public enum UnixSocketTable {
    /// Every Unix socket (named or not, in any state), with the processes
    /// that hold them.
    ///
    /// Read with the kernel's socket diagnostics (`NETLINK_SOCK_DIAG`), which
    /// report abstract names exactly and the inode of each socket file; where
    /// those are unavailable, from `/proc/net/unix`, which prints a leading
    /// NUL as `@` — so a file bound as `@name` by a relative path cannot be
    /// told from an abstract name there. Processes come from `/proc/*/fd`.
    /// - Parameter processes: Whether to look up the processes (a walk of
    ///   every descriptor of every process).
    /// - Throws: ``SocketError`` with `.unsupported` on other platforms, or
    ///   if neither source can be read.
    public static func entries(withProcesses processes: Bool = true) throws(SocketError) -> [UnixSocketEntry] {
        #if os(Linux)
        try SocketTableReader.read(withProcesses: processes)
        #else
        throw SocketError("socket table", code: .unsupported("reading the kernel's socket table is"))
        #endif
    }
}
