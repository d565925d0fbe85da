// The only file that calls the C library for sockets. Everything above it is
// portable; every platform difference is decided here, once.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#else
#error("Unsupported Platform")
#endif
import SystemPackage
import CUDSKit

/// The kind of socket, as `socket(2)` spells it.
enum SocketKind: Sendable {
    case stream
    case datagram
    case seqpacket
    /// TCP over IPv4 or IPv6; the family comes from the address.
    case tcp

    var name: String {
        switch self {
        case .stream: "stream"
        case .datagram: "datagram"
        case .seqpacket: "seqpacket"
        case .tcp: "tcp"
        }
    }

    var rawType: CInt {
        #if canImport(Glibc)
        switch self {
        case .stream, .tcp: CInt(SOCK_STREAM.rawValue)
        case .datagram: CInt(SOCK_DGRAM.rawValue)
        case .seqpacket: CInt(SOCK_SEQPACKET.rawValue)
        }
        #else
        switch self {
        case .stream, .tcp: SOCK_STREAM
        case .datagram: SOCK_DGRAM
        case .seqpacket: SOCK_SEQPACKET
        }
        #endif
    }
}

/// Thin forwarders to the C library. Each returns `Result<_, Errno>`, reads
/// `errno` right after the call, and retries `EINTR` unless told not to.
enum Sys {
    @inline(__always)
    static func valueOrErrno<I: FixedWidthInteger>(
        retryOnInterrupt: Bool = true,
        _ call: () -> I
    ) -> Result<I, Errno> {
        while true {
            let result = call()
            if result != -1 { return .success(result) }
            let error = Errno(rawValue: errno)
            if retryOnInterrupt && error == .interrupted { continue }
            return .failure(error)
        }
    }

    static func nothingOrErrno(retryOnInterrupt: Bool = true, _ call: () -> CInt) -> Result<Void, Errno> {
        valueOrErrno(retryOnInterrupt: retryOnInterrupt, call).map { _ in () }
    }

    // MARK: Creating sockets

    /// A new socket that is close-on-exec from its first moment on Linux and
    /// does not raise SIGPIPE on Darwin.
    static func socket(family: CInt = CInt(AF_UNIX), kind: SocketKind, nonBlocking: Bool = false) -> Result<CInt, Errno> {
        #if os(Linux)
        var type = kind.rawType | CInt(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= CInt(SOCK_NONBLOCK.rawValue) }
        return valueOrErrno { Glibc.socket(family, type, 0) }
        #else
        let created = valueOrErrno { Darwin.socket(family, kind.rawType, 0) }
        guard case .success(let fd) = created else { return created }
        // Darwin has no SOCK_CLOEXEC: a fork+exec in another thread between these
        // two calls can inherit the descriptor. Rust's std accepts the same window.
        if case .failure(let error) = configureNewDescriptor(fd, nonBlocking: nonBlocking) {
            _ = close(fd)
            return .failure(error)
        }
        return .success(fd)
        #endif
    }

    static func socketPair(kind: SocketKind) -> Result<(CInt, CInt), Errno> {
        var fds: [CInt] = [-1, -1]
        #if os(Linux)
        let type = kind.rawType | CInt(SOCK_CLOEXEC.rawValue)
        let result = nothingOrErrno { Glibc.socketpair(CInt(AF_UNIX), type, 0, &fds) }
        return result.map { (fds[0], fds[1]) }
        #else
        if case .failure(let error) = nothingOrErrno({ Darwin.socketpair(AF_UNIX, kind.rawType, 0, &fds) }) {
            return .failure(error)
        }
        for fd in fds {
            if case .failure(let error) = configureNewDescriptor(fd, nonBlocking: false) {
                _ = close(fds[0])
                _ = close(fds[1])
                return .failure(error)
            }
        }
        return .success((fds[0], fds[1]))
        #endif
    }

    static func accept(
        _ fd: CInt, _ address: UnsafeMutablePointer<sockaddr>?, _ length: UnsafeMutablePointer<socklen_t>?,
        nonBlocking: Bool = false
    ) -> Result<CInt, Errno> {
        #if os(Linux)
        var flags = CInt(SOCK_CLOEXEC.rawValue)
        if nonBlocking { flags |= CInt(SOCK_NONBLOCK.rawValue) }
        return valueOrErrno { cudskit_accept4(fd, address, length, flags) }
        #else
        let accepted = valueOrErrno { Darwin.accept(fd, address, length) }
        guard case .success(let newFD) = accepted else { return accepted }
        if case .failure(let error) = configureNewDescriptor(newFD, nonBlocking: nonBlocking) {
            _ = close(newFD)
            return .failure(error)
        }
        return .success(newFD)
        #endif
    }

    #if !os(Linux)
    /// Darwin: close-on-exec, optional non-blocking, and SO_NOSIGPIPE, set after creation.
    private static func configureNewDescriptor(_ fd: CInt, nonBlocking: Bool) -> Result<Void, Errno> {
        if case .failure(let error) = nothingOrErrno({ fcntl(fd, F_SETFD, FD_CLOEXEC) }) {
            return .failure(error)
        }
        if nonBlocking {
            let flags = fcntl(fd, F_GETFL)
            if case .failure(let error) = nothingOrErrno({ fcntl(fd, F_SETFL, flags | O_NONBLOCK) }) {
                return .failure(error)
            }
        }
        var on: CInt = 1
        return nothingOrErrno {
            setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &on, socklen_t(MemoryLayout<CInt>.size))
        }
    }
    #endif

    // MARK: Addresses

    static func bind(_ fd: CInt, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Result<Void, Errno> {
        nothingOrErrno { systemBind(fd, address, length) }
    }

    /// `connect` is not retried after EINTR: the connection continues in the
    /// background, and a second call would fail with EALREADY/EISCONN. The caller
    /// waits for completion instead (see `Connecting.swift`).
    static func connect(_ fd: CInt, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Result<Void, Errno> {
        nothingOrErrno(retryOnInterrupt: false) { systemConnect(fd, address, length) }
    }

    static func listen(_ fd: CInt, backlog: CInt) -> Result<Void, Errno> {
        nothingOrErrno { systemListen(fd, backlog) }
    }

    static func localAddress(_ fd: CInt, _ address: UnsafeMutablePointer<sockaddr>, _ length: UnsafeMutablePointer<socklen_t>) -> Result<Void, Errno> {
        nothingOrErrno { getsockname(fd, address, length) }
    }

    static func peerAddress(_ fd: CInt, _ address: UnsafeMutablePointer<sockaddr>, _ length: UnsafeMutablePointer<socklen_t>) -> Result<Void, Errno> {
        nothingOrErrno { getpeername(fd, address, length) }
    }

    // MARK: Data

    /// Sends without ever raising SIGPIPE: `MSG_NOSIGNAL` on Linux; on Darwin the
    /// socket carries `SO_NOSIGPIPE` from creation.
    static func send(_ fd: CInt, _ buffer: UnsafeRawBufferPointer, flags: CInt = 0) -> Result<Int, Errno> {
        #if os(Linux)
        valueOrErrno { cudskit_send(fd, buffer.baseAddress, buffer.count, flags | noSignalFlag) }
        #else
        valueOrErrno { systemSend(fd, buffer.baseAddress, buffer.count, flags | noSignalFlag) }
        #endif
    }

    static func send(
        _ fd: CInt, _ buffer: UnsafeRawBufferPointer,
        to address: UnsafePointer<sockaddr>, _ length: socklen_t, flags: CInt = 0
    ) -> Result<Int, Errno> {
        valueOrErrno { sendto(fd, buffer.baseAddress, buffer.count, flags | noSignalFlag, address, length) }
    }

    static func receive(_ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer, flags: CInt = 0) -> Result<Int, Errno> {
        #if os(Linux)
        valueOrErrno { cudskit_recv(fd, buffer.baseAddress, buffer.count, flags) }
        #else
        valueOrErrno { recv(fd, buffer.baseAddress, buffer.count, flags) }
        #endif
    }

    static func receiveMessage(_ fd: CInt, _ message: UnsafeMutablePointer<msghdr>, flags: CInt) -> Result<Int, Errno> {
        valueOrErrno { recvmsg(fd, message, flags) }
    }

    static func sendMessage(_ fd: CInt, _ message: UnsafePointer<msghdr>, flags: CInt = 0) -> Result<Int, Errno> {
        valueOrErrno { sendmsg(fd, message, flags | noSignalFlag) }
    }

    /// Asks recvmsg for the full length of a datagram that did not fit (Linux);
    /// elsewhere only the `MSG_TRUNC` flag in the result says it was cut.
    static var reportFullLengthFlag: CInt {
        #if os(Linux)
        CInt(MSG_TRUNC)
        #else
        0
        #endif
    }

    static let truncatedFlag = CInt(MSG_TRUNC)
    /// Makes one call on a blocking socket return `EAGAIN` instead of waiting.
    static let dontWaitFlag = CInt(MSG_DONTWAIT)
    static let controlTruncatedFlag = CInt(MSG_CTRUNC)

    private static var noSignalFlag: CInt {
        #if os(Linux)
        CInt(MSG_NOSIGNAL)
        #else
        0
        #endif
    }

    static func shutdown(_ fd: CInt, how: CInt) -> Result<Void, Errno> {
        nothingOrErrno { systemShutdown(fd, how) }
    }

    static let shutdownRead = CInt(SHUT_RD)
    static let shutdownWrite = CInt(SHUT_WR)
    static let shutdownBoth = CInt(SHUT_RDWR)

    /// Never retried: after EINTR the descriptor is already closed on Linux, and a
    /// retry could close a descriptor another thread just opened.
    /// https://lwn.net/Articles/576478/
    static func close(_ fd: CInt) -> Result<Void, Errno> {
        let result = systemClose(fd)
        if result == 0 { return .success(()) }
        let error = Errno(rawValue: errno)
        return error == .interrupted ? .success(()) : .failure(error)
    }

    // MARK: Options

    static func setOption<T>(_ fd: CInt, level: CInt, name: CInt, _ value: T) -> Result<Void, Errno> {
        withUnsafeBytes(of: value) { bytes in
            nothingOrErrno { setsockopt(fd, level, name, bytes.baseAddress, socklen_t(bytes.count)) }
        }
    }

    static func getOption<T>(_ fd: CInt, level: CInt, name: CInt, as type: T.Type, initial: T) -> Result<T, Errno> {
        var value = initial
        var length = socklen_t(MemoryLayout<T>.size)
        return withUnsafeMutableBytes(of: &value) { bytes in
            nothingOrErrno { getsockopt(fd, level, name, bytes.baseAddress, &length) }
        }.map { value }
    }

    static func setTimeout(_ fd: CInt, receive: Bool, _ duration: Duration?) -> Result<Void, Errno> {
        var time = timeval()
        if let duration {
            let (seconds, attoseconds) = duration.components
            time.tv_sec = .init(max(0, seconds))
            time.tv_usec = .init(max(0, attoseconds / 1_000_000_000_000))
            // A zero timeval means "no timeout" to the kernel; the smallest real one is 1 µs.
            if seconds <= 0 && time.tv_usec == 0 { time.tv_sec = 0; time.tv_usec = 1 }
        }
        let name = receive ? SO_RCVTIMEO : SO_SNDTIMEO
        return setOption(fd, level: CInt(SOL_SOCKET), name: CInt(name), time)
    }

    static func socketError(_ fd: CInt) -> Result<CInt, Errno> {
        getOption(fd, level: CInt(SOL_SOCKET), name: CInt(SO_ERROR), as: CInt.self, initial: 0)
    }

    static let unixFamily = CInt(AF_UNIX)
    static let inetFamilies: Set<CInt> = [CInt(AF_INET), CInt(AF_INET6)]

    /// The address family a socket was made with.
    static func socketFamily(_ fd: CInt) -> Result<CInt, Errno> {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                nothingOrErrno { getsockname(fd, address, &length) }
            }
        }.map { CInt(storage.ss_family) }
    }

    /// The socket's type, as UDSKit names it; `nil` for a type it does not know.
    static func socketKind(_ fd: CInt) -> Result<SocketKind?, Errno> {
        getOption(fd, level: CInt(SOL_SOCKET), name: CInt(SO_TYPE), as: CInt.self, initial: 0).map { type in
            [SocketKind.stream, .datagram, .seqpacket].first { $0.rawType == type }
        }
    }

    /// Whether the socket listens (`SO_ACCEPTCONN`).
    static func isListening(_ fd: CInt) -> Result<Bool, Errno> {
        getOption(fd, level: CInt(SOL_SOCKET), name: CInt(SO_ACCEPTCONN), as: CInt.self, initial: 0).map { $0 != 0 }
    }

    static func setCloseOnExec(_ fd: CInt) -> Result<Void, Errno> {
        let flags = fcntl(fd, F_GETFD)
        if flags == -1 { return .failure(Errno(rawValue: errno)) }
        return nothingOrErrno { fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
    }

    static func isNonBlocking(_ fd: CInt) -> Bool {
        fcntl(fd, F_GETFL) & O_NONBLOCK != 0
    }

    static func setNonBlocking(_ fd: CInt, _ on: Bool) -> Result<Void, Errno> {
        let flags = fcntl(fd, F_GETFL)
        if flags == -1 { return .failure(Errno(rawValue: errno)) }
        let updated = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if updated == flags { return .success(()) }
        return nothingOrErrno { fcntl(fd, F_SETFL, updated) }
    }

    /// Waits until `fd` is writable (a pending connect finished) or readable.
    static func poll(_ fd: CInt, forWriting: Bool, timeoutMilliseconds: CInt) -> Result<Bool, Errno> {
        var entry = pollfd(fd: fd, events: Int16(forWriting ? POLLOUT : POLLIN), revents: 0)
        return valueOrErrno { systemPoll(&entry, 1, timeoutMilliseconds) }.map { $0 > 0 }
    }

    // MARK: Files

    // Paths are bytes: a socket path need not be UTF-8, and a String would
    // turn such bytes into U+FFFD and name another file.

    static func fileStatus(path: [UInt8]) -> Result<stat, Errno> {
        var status = stat()
        return withCPath(path) { path in nothingOrErrno { lstat(path, &status) } }.map { status }
    }

    static func fileStatus(descriptor fd: CInt) -> Result<stat, Errno> {
        var status = stat()
        return nothingOrErrno { fstat(fd, &status) }.map { status }
    }

    static func unlink(path: [UInt8]) -> Result<Void, Errno> {
        withCPath(path) { path in nothingOrErrno { systemUnlink(path) } }
    }

    static func changeMode(path: [UInt8], _ mode: mode_t) -> Result<Void, Errno> {
        withCPath(path) { path in nothingOrErrno { chmod(path, mode) } }
    }

    static func changeOwner(path: [UInt8], user: uid_t, group: gid_t) -> Result<Void, Errno> {
        withCPath(path) { path in nothingOrErrno { lchown(path, user, group) } }
    }

    private static func withCPath<R>(_ path: [UInt8], _ body: (UnsafePointer<CChar>) -> R) -> R {
        (path + [0]).withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) }
        }
    }

    /// Sets the mode of the file a socket creates when it binds. Linux honours the
    /// socket inode's mode (less the umask) at bind time, so the path never shows a
    /// wider mode than asked for; Darwin ignores it, and the caller fixes the mode
    /// right after bind.
    static func presetBindMode(_ fd: CInt, _ mode: mode_t) -> Result<Void, Errno> {
        #if os(Linux)
        nothingOrErrno { fchmod(fd, mode) }
        #else
        .success(())
        #endif
    }

    static var processID: pid_t { getpid() }

    static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    static func unsetEnvironment(_ name: String) {
        _ = unsetenv(name)
    }

    /// A descriptor that costs nothing to hold: the reserve a listener frees
    /// at the descriptor limit. -1 if it cannot be opened.
    static func openReserve() -> CInt {
        (try? valueOrErrno { open("/dev/null", O_RDONLY | O_CLOEXEC) }.get()) ?? -1
    }

    /// Sleeps the calling thread, resuming after signals until `duration` passed.
    static func sleep(for duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var request = timespec(tv_sec: .init(seconds), tv_nsec: .init(attoseconds / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
    }

    static var onlineProcessorCount: Int { max(1, Int(sysconf(CInt(_SC_NPROCESSORS_ONLN)))) }

    /// Marks a received descriptor close-on-exec. Linux did it atomically
    /// (`MSG_CMSG_CLOEXEC`); Darwin has no such flag, so there is a window.
    static func markCloseOnExec(_ fd: CInt) {
        #if !os(Linux)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        #endif
    }

    static func peerCredentials(_ fd: CInt) -> Result<PeerCredentials, Errno> {
        var pid: pid_t = -1
        var uid: uid_t = 0
        var gid: gid_t = 0
        return nothingOrErrno { cudskit_peer_credentials(fd, &pid, &uid, &gid) }.map {
            PeerCredentials(processID: pid >= 0 ? pid : nil, userID: uid, groupID: gid)
        }
    }

    /// The peer's supplementary groups (Linux `SO_PEERGROUPS`).
    static func peerGroups(_ fd: CInt) -> Result<[UInt32], Errno> {
        var capacity = 64
        while true {
            var groups = [gid_t](repeating: 0, count: capacity)
            let count = groups.withUnsafeMutableBufferPointer { cudskit_peer_groups(fd, $0.baseAddress, CInt(capacity)) }
            if count >= 0 { return .success(groups.prefix(Int(count)).map { UInt32($0) }) }
            if count == -1 { return .failure(Errno(rawValue: errno)) }
            capacity = Int(-count - 2)
        }
    }

    /// The peer's security label (Linux `SO_PEERSEC`), or `nil` without a security module.
    static func peerSecurityLabel(_ fd: CInt) -> Result<String?, Errno> {
        // On the stack: this runs for every connection an access policy checks.
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 4096) { label in
            let length = cudskit_peer_security_label(fd, label.baseAddress, CInt(label.count))
            if length < 0 {
                let error = Errno(rawValue: errno)
                return error == .protocolNotAvailable || error == .notSupported ? .success(nil) : .failure(error)
            }
            let bytes = label.prefix(Int(length)).map { UInt8(bitPattern: $0) }.prefix { $0 != 0 }
            return .success(bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self))
        }
    }

    /// A pidfd for the peer process (Linux `SO_PEERPIDFD`).
    static func peerProcessDescriptor(_ fd: CInt) -> Result<CInt, Errno> {
        valueOrErrno { cudskit_peer_pidfd(fd) }
    }

    static func processIsAlive(pidfd: CInt) -> Bool { cudskit_pidfd_is_alive(pidfd) == 1 }

    /// The pid a pidfd refers to: the `Pid:` line of /proc/self/fdinfo (Linux).
    static func processID(ofPidfd pidfd: CInt) -> Int32? {
        guard let text = readSmallFile("/proc/self/fdinfo/\(pidfd)") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Pid:") {
            return Int32(line.dropFirst(4).trimmingPrefix(while: { $0 == " " || $0 == "\t" }))
        }
        return nil
    }

    /// A process's command name (Linux `/proc/PID/comm`), without the newline.
    static func commandName(of pid: Int32) -> String? {
        readSmallFile("/proc/\(pid)/comm").map { String($0.prefix { $0 != "\n" }) }
    }

    /// The text of a small file (a /proc entry), or `nil`.
    private static func readSmallFile(_ path: String) -> String? {
        let fd = path.withCString { open($0, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        defer { _ = close(fd) }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { return nil }
        return String(decoding: bytes.prefix(count), as: UTF8.self)
    }

    /// Linux `SO_PASSCRED`: each received datagram carries its sender's credentials.
    static func setPassCredentials(_ fd: CInt, _ on: Bool) -> Result<Void, Errno> {
        guard cudskit_so_passcred != 0 else { return .failure(.notSupported) }
        return setOption(fd, level: CInt(SOL_SOCKET), name: cudskit_so_passcred, CInt(on ? 1 : 0))
    }
}

// Aliases keep the C spellings out of the forwarders above, where a Swift
// method of the same name would shadow them.
private let systemBind = bind
private let systemConnect = connect
private let systemListen = listen
private let systemSend = send
private let systemShutdown = shutdown
private let systemClose = close
private let systemUnlink = unlink
private let systemPoll = poll

/// Platform facts that shape addresses.
enum Platform {
    static let sunPathCapacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
    static let sunPathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
    static var supportsAbstractNames: Bool {
        #if os(Linux)
        true
        #else
        false
        #endif
    }
    static var supportsSeqpacket: Bool {
        #if os(Linux)
        true
        #else
        false
        #endif
    }
    static let defaultBacklog = CInt(SOMAXCONN)
}
