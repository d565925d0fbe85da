import SystemPackage

/// The type of a Unix socket, as `socket(2)` names it.
public enum UnixSocketType: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// `SOCK_STREAM`: a connected byte stream.
    case stream
    /// `SOCK_DGRAM`: messages, each with its sender.
    case datagram
    /// `SOCK_SEQPACKET`: a connection that keeps message boundaries (Linux).
    case seqpacket

    /// `stream`, `dgram` or `seqpacket`, as the `uds` options spell it.
    public var description: String {
        switch self {
        case .stream: "stream"
        case .datagram: "dgram"
        case .seqpacket: "seqpacket"
        }
    }
}

/// What is at a Unix socket address, as a connect probe tells it.
///
///     switch try SocketFileStatus.probe(UnixAddress("./uds_socket")) {
///     case .listening: print("a server is there")
///     case .stale: print("a socket file nobody listens on")
///     case .notASocket(let type): print("a \(type.name)")
///     case .noPermission: print("not allowed to connect")
///     case .absent: print("nothing there")
///     }
public enum SocketFileStatus: Hashable, Sendable {
    /// Someone holds the socket: a stream or seqpacket listener, or a bound
    /// datagram socket. The type is known for a datagram socket, and for the
    /// others when the probe was asked to identify them; the credentials (of
    /// the process that called `listen`) only then, and only for listeners.
    case listening(type: UnixSocketType?, credentials: PeerCredentials?)
    /// A socket file nobody is bound to: left behind by a process that exited
    /// without removing it. Binding there replaces it.
    case stale
    /// The path exists and is another kind of file.
    case notASocket(FileType)
    /// The file (or a directory on the way) does not let this process connect.
    case noPermission
    /// No file at the path, or no socket bound to the abstract name.
    case absent

    /// Probes `address`.
    ///
    /// For a path the probe is a non-blocking datagram `connect`, which no
    /// server sees: refused means stale, `EPROTOTYPE` means a stream or
    /// seqpacket socket holds the address, success a datagram socket. An
    /// abstract name is looked up in the kernel's socket table instead
    /// (``UnixSocketTable``), since each socket type has its own abstract
    /// names; only without the table is it probed by connecting.
    ///
    /// With `identifying: true` a stream or seqpacket listener is told apart
    /// and its credentials read (`SO_PEERCRED`) over a real connection that is
    /// closed at once. **The server sees that connection**: it accepts it and
    /// reads end-of-stream at once, as from a client that sent nothing. Leave
    /// `identifying` off where that matters.
    ///
    /// The corresponding C functions are `lstat`, `socket`, `connect` and
    /// `getsockopt(SO_PEERCRED)`.
    /// - Throws: ``SocketError`` naming `probe` (or `stat`) and the address,
    ///   for failures that say nothing about the address (out of descriptors, say).
    public static func probe(_ address: UnixAddress, identifying: Bool = false) throws(SocketError) -> SocketFileStatus {
        let shown = address.description
        switch address.kind {
        case .unnamed:
            throw SocketError("probe", address: shown, code: .invalidAddress("an unnamed address cannot be probed"))
        case .abstract:
            return try probeAbstract(address, identifying: identifying)
        case .path:
            break
        }
        switch Sys.fileStatus(path: address.bytes) {
        case .success(let status):
            let type = FileType(mode: status.st_mode)
            if type != .socket { return .notASocket(type) }
        case .failure(.noSuchFileOrDirectory), .failure(.notDirectory): return .absent
        case .failure(.permissionDenied): return .noPermission
        case .failure(let errno): throw SocketError("stat", address: shown, errno: errno)
        }

        switch try attempt(address, kind: .datagram, type: .datagram) {
        case .answered(let status):
            return status
        case .wrongType:
            guard identifying else { return .listening(type: nil, credentials: nil) }
            for (kind, type) in connectionTypes {
                switch try attempt(address, kind: kind, type: type) {
                case .answered(let status): return status
                case .wrongType: continue
                // Bound by a socket of this type that does not listen (a
                // client's own address, say): held, but nobody to ask.
                case .refused: return .listening(type: type, credentials: nil)
                }
            }
            return .listening(type: nil, credentials: nil)
        case .refused:
            return .stale
        }
    }

    /// The connection-oriented types this platform has, for telling them apart.
    private static var connectionTypes: [(SocketKind, UnixSocketType)] {
        Platform.supportsSeqpacket ? [(.stream, .stream), (.seqpacket, .seqpacket)] : [(.stream, .stream)]
    }

    private static func probeAbstract(_ address: UnixAddress, identifying: Bool) throws(SocketError) -> SocketFileStatus {
        #if os(Linux)
        if let entries = try? SocketTableReader.read(withProcesses: false) {
            // Accepted connections carry their listener's name: skip them.
            let holders = entries.filter { $0.address == address && $0.holdsAddress }
            guard !holders.isEmpty else { return .absent }
            let listener = holders.first { $0.state == .listening && $0.type != nil }
            guard identifying, let listener, let type = listener.type else {
                return .listening(type: (listener ?? holders[0]).type, credentials: nil)
            }
            let kind: SocketKind = type == .seqpacket ? .seqpacket : .stream
            if case .answered(let status) = try attempt(address, kind: kind, type: type) { return status }
            return .listening(type: type, credentials: nil)
        }
        #endif
        // Without the table, connect with each type in turn: the last two are
        // seen by the server, so only when asked to identify.
        if case .answered(let status) = try attempt(address, kind: .datagram, type: .datagram) { return status }
        guard identifying else { return .absent }
        for (kind, type) in connectionTypes {
            if case .answered(let status) = try attempt(address, kind: kind, type: type) { return status }
        }
        return .absent
    }

    private enum Attempt {
        case answered(SocketFileStatus)
        /// `EPROTOTYPE`: a socket of another type holds the address.
        case wrongType
        case refused
    }

    /// One non-blocking connect of `kind`; a connection is asked for the
    /// peer's credentials and closed at once.
    private static func attempt(_ address: UnixAddress, kind: SocketKind, type: UnixSocketType) throws(SocketError) -> Attempt {
        let shown = address.description
        let fd: CInt
        switch Sys.socket(kind: kind, nonBlocking: true) {
        case .success(let created): fd = created
        case .failure(let errno): throw SocketError("socket", address: shown, errno: errno)
        }
        defer { _ = Sys.close(fd) }
        switch address.withSockaddr({ Sys.connect(fd, $0, $1) }) {
        case .success:
            let credentials = kind == .datagram ? nil : try? Sys.peerCredentials(fd).get()
            return .answered(.listening(type: type, credentials: credentials))
        case .failure(.wouldBlock), .failure(.nowInProgress):
            // A full backlog: a listener of this type, too busy to say who.
            return .answered(.listening(type: type, credentials: nil))
        case .failure(.protocolWrongTypeForSocket):
            return .wrongType
        case .failure(.connectionRefused):
            return .refused
        case .failure(.permissionDenied), .failure(.notPermitted):
            return .answered(.noPermission)
        case .failure(.noSuchFileOrDirectory), .failure(.notDirectory):
            return .answered(.absent)
        case .failure(let errno):
            throw SocketError("probe", address: shown, errno: errno)
        }
    }
}
