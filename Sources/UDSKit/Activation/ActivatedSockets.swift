import Logging
import Synchronization
import SystemPackage

/// Sockets a service manager opened and passed to this process: systemd's
/// socket activation protocol (`LISTEN_PID`, `LISTEN_FDS` from descriptor 3,
/// `LISTEN_FDNAMES`), which `systemd-socket-activate` and other supervisors
/// speak too.
///
///     let activated = try ActivatedSockets.take()
///     let listener = try activated.asyncStreamListener()       // the only one
///     let control = try activated.streamListener(named: "control")
///
/// Each socket is checked with the kernel when it is handed out (a Unix socket
/// of the type asked for, listening or not), is close-on-exec, and is never
/// unlinked by UDSKit: the service manager owns its file.
public final class ActivatedSockets: Sendable {
    /// One passed socket, as the kernel describes it.
    public struct Passed: Sendable, Hashable {
        /// Its name from `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`), or `unknown`.
        public let name: String
        public let descriptor: FileDescriptor
        /// `stream`, `datagram`, `seqpacket`, or `other` (not a Unix socket UDSKit knows).
        public let type: String
        /// Whether it listens: `false` for datagram sockets and for the one
        /// connection of inetd-style activation (systemd's `Accept=yes`).
        public let isListening: Bool
        /// Where it is bound, as the kernel reports it.
        public let address: UnixAddress?
    }

    /// Every socket that was passed, in descriptor order.
    public let sockets: [Passed]
    private let taken = Mutex<Set<CInt>>([])

    private init(sockets: [Passed]) {
        self.sockets = sockets
    }

    private static let once = Mutex<ActivatedSockets?>(nil)

    /// The sockets passed to this process; none if the variables are absent
    /// or name another process (`LISTEN_PID`). The first call reads the
    /// variables and unsets them, so that child processes do not take the
    /// sockets too; later calls return the same sockets.
    /// - Parameter logger: Told (info) of each socket the first call took;
    ///   `nil` logs nothing.
    public static func take(logger: Logger? = nil) throws(SocketError) -> ActivatedSockets {
        let (sockets, first) = try once.withLock { (cached) throws(SocketError) -> (ActivatedSockets, Bool) in
            if let cached { return (cached, false) }
            let found = try read()
            cached = found
            return (found, true)
        }
        if first, let logger { sockets.log(to: logger) }
        return sockets
    }

    private static func read() throws(SocketError) -> ActivatedSockets {
        defer { ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"].forEach(Sys.unsetEnvironment) }
        guard let pidText = Sys.environment("LISTEN_PID"), let countText = Sys.environment("LISTEN_FDS") else {
            return ActivatedSockets(sockets: [])
        }
        guard let pid = Int32(pidText), pid == Sys.processID else { return ActivatedSockets(sockets: []) }
        guard let count = Int(countText), count >= 0, count <= 4096 else {
            throw SocketError("activation", address: "LISTEN_FDS=\(countText)", code: .invalidArgument("not a descriptor count"))
        }
        let names = Sys.environment("LISTEN_FDNAMES").map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        var sockets: [Passed] = []
        for index in 0..<count {
            let fd = CInt(3 + index)
            if case .failure(let errno) = Sys.setCloseOnExec(fd) {
                throw SocketError("activation", address: "descriptor \(fd)", errno: errno)
            }
            let kind = (try? Sys.socketKind(fd).get()) ?? nil
            let isUnix = (try? Sys.socketFamily(fd).get()) == Sys.unixFamily
            let address: UnixAddress? = isUnix ? UnixAddress.fromKernel { address, length in
                _ = Sys.localAddress(fd, address, length)
            } : nil
            sockets.append(Passed(
                name: index < names.count && !names[index].isEmpty ? names[index] : "unknown",
                descriptor: FileDescriptor(rawValue: fd),
                type: isUnix ? kind?.name ?? "other" : "other",
                isListening: (try? Sys.isListening(fd).get()) ?? false,
                address: address))
        }
        return ActivatedSockets(sockets: sockets)
    }

    /// The passed socket named `name`, or the only one when `name` is `nil`,
    /// marked as handed out (each is handed out once).
    public func take(named name: String? = nil) throws(SocketError) -> Passed {
        let candidates = name.map { name in sockets.filter { $0.name == name } } ?? sockets
        guard let passed = candidates.first else {
            let known = sockets.map(\.name).joined(separator: ", ")
            let why = sockets.isEmpty ? "no sockets were passed (LISTEN_FDS)" : "no socket named \(name ?? "") among: \(known)"
            throw SocketError("activation", address: name, code: .invalidArgument(why))
        }
        if name == nil && sockets.count > 1 {
            throw SocketError("activation", code: .invalidArgument(
                "\(sockets.count) sockets were passed (\(sockets.map(\.name).joined(separator: ", "))): choose one by name"))
        }
        let first = taken.withLock { $0.insert(passed.descriptor.rawValue).inserted }
        guard first else {
            throw SocketError("activation", address: passed.name, code: .invalidArgument("this socket was already handed out"))
        }
        return passed
    }

    // Typed hand-outs: each checks the socket with the kernel as it adopts it.

    /// The passed listening stream socket named `name` (or the only one).
    public func streamListener(named name: String? = nil, admitting policy: AccessPolicy = .everyone) throws(SocketError) -> StreamListener {
        try StreamListener(adopting: take(named: name).descriptor, admitting: policy)
    }

    /// The passed listening seqpacket socket named `name` (or the only one).
    public func seqpacketListener(named name: String? = nil, admitting policy: AccessPolicy = .everyone) throws(SocketError) -> SeqpacketListener {
        try SeqpacketListener(adopting: take(named: name).descriptor, admitting: policy)
    }

    /// The passed datagram socket named `name` (or the only one).
    public func datagramSocket(named name: String? = nil) throws(SocketError) -> DatagramSocket {
        try DatagramSocket(adopting: take(named: name).descriptor)
    }

    /// The connection of inetd-style activation (`Accept=yes`).
    public func streamSocket(named name: String? = nil) throws(SocketError) -> StreamSocket {
        try StreamSocket(adopting: take(named: name).descriptor)
    }

    /// The passed listening stream socket, for async code, its connections on `loops`.
    public func asyncStreamListener(
        named name: String? = nil, admitting policy: AccessPolicy = .everyone, on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) -> AsyncStreamListener {
        try AsyncStreamListener(adopting: take(named: name).descriptor, admitting: policy, on: loops)
    }

    /// The passed listening seqpacket socket, for async code, its connections on `loops`.
    public func asyncSeqpacketListener(
        named name: String? = nil, admitting policy: AccessPolicy = .everyone, on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) -> AsyncSeqpacketListener {
        try AsyncSeqpacketListener(adopting: take(named: name).descriptor, admitting: policy, on: loops)
    }

    /// The passed datagram socket, for async code.
    public func asyncDatagramSocket(named name: String? = nil, on loop: EventLoop = .shared) throws(SocketError) -> AsyncDatagramSocket {
        try AsyncDatagramSocket(adopting: take(named: name).descriptor, on: loop)
    }

    /// The connection of inetd-style activation, for async code.
    public func asyncStreamSocket(named name: String? = nil, on loop: EventLoop = .shared) throws(SocketError) -> AsyncStreamSocket {
        try AsyncStreamSocket(adopting: take(named: name).descriptor, on: loop)
    }
}
