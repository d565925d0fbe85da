#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

extension FileType {
    init(mode: mode_t) {
        switch mode & S_IFMT {
        case S_IFREG: self = .regular
        case S_IFDIR: self = .directory
        case S_IFLNK: self = .symbolicLink
        case S_IFCHR: self = .characterDevice
        case S_IFBLK: self = .blockDevice
        case S_IFSOCK: self = .socket
        case S_IFIFO: self = .fifo
        default: self = .unknown
        }
    }
}

/// What a connect probe says about an existing socket file.
enum ProbeResult: Equatable {
    /// Something accepts connections or messages there.
    case live
    /// Nothing is bound to it: a file left behind by a process that exited.
    case stale
    /// The probe itself failed (for example, no permission).
    case failed(Errno)
}

extension SocketHandle {
    /// Binds safely; see ``Binding/bind(_:to:options:)``.
    func bind(to address: UnixAddress, options: BindOptions) throws(SocketError) -> Bool {
        try Binding.bind(self, to: address, options: options)
    }
}

enum Binding {
    /// Probes the socket file at `address` with a non-blocking connect of the
    /// given kind. Refused means stale; connected, a full backlog (EAGAIN) or a
    /// socket of another type (EPROTOTYPE) all mean someone holds it.
    /// `bind` probes with a datagram socket: it finds a live datagram socket
    /// without touching it and a listener by EPROTOTYPE, where a stream probe
    /// would leave a dead connection in the live server's accept queue.
    static func probe(_ address: UnixAddress, kind: SocketKind) -> ProbeResult {
        let fd: CInt
        switch Sys.socket(kind: kind, nonBlocking: true) {
        case .success(let created): fd = created
        case .failure(let errno): return .failed(errno)
        }
        defer { _ = Sys.close(fd) }
        let result = address.withSockaddr { Sys.connect(fd, $0, $1) }
        switch result {
        case .success: return .live
        case .failure(.connectionRefused): return .stale
        case .failure(.wouldBlock), .failure(.protocolWrongTypeForSocket), .failure(.nowInProgress):
            return .live
        case .failure(let errno): return .failed(errno)
        }
    }

    /// Binds `handle` to `address` safely; returns whether a stale socket file
    /// was replaced. Never removes a live socket or a file that is not a socket.
    static func bind(
        _ handle: SocketHandle, to address: UnixAddress, options: BindOptions
    ) throws(SocketError) -> Bool {
        let shown = address.description
        let fd = handle.descriptor
        func failure(_ code: SocketError.Code) -> SocketError {
            SocketError("bind", address: shown, code: code)
        }
        if address.kind == .unnamed {
            throw SocketError("bind", address: shown, code: .invalidAddress("cannot bind to an unnamed address"))
        }
        handle.currentLabel = shown
        let handsOver = options.owner != nil || options.group != nil
        // An abstract name has no file: a mode or owner would be silently ignored.
        if address.kind == .abstract && (options.permissions != nil || handsOver) {
            throw failure(.invalidArgument(
                "an abstract name has no file, so no mode, owner or group; admit peers with an access policy instead"))
        }
        let finalMode = options.permissions ?? (handsOver ? [.ownerReadWrite, .groupReadWrite] : nil)
        if let finalMode, address.kind == .path {
            // While the file still belongs to us, only we may use it.
            let initial = handsOver ? finalMode.rawValue & 0o700 : finalMode.rawValue
            if case .failure(let errno) = Sys.presetBindMode(fd, initial) {
                throw failure(.system(errno))
            }
        }

        var replacedStale = false
        // Each pass either binds, fails for good, or removes one stale file; a
        // rival process racing for the same path can cost a few passes.
        var passes = 0
        while true {
            passes += 1
            let bound = address.withSockaddr { Sys.bind(fd, $0, $1) }
            guard case .failure(let errno) = bound else { break }
            guard errno == .addressInUse, passes < 5 else { throw failure(.system(errno)) }
            // An abstract name vanishes with its socket: in use means live.
            guard address.kind == .path else { throw failure(.addressInUse) }
            let path = address.bytes

            let before: stat
            switch Sys.fileStatus(path: path) {
            case .success(let status): before = status
            case .failure(.noSuchFileOrDirectory): continue
            case .failure(let errno): throw failure(.system(errno))
            }
            let type = FileType(mode: before.st_mode)
            guard type == .socket else { throw failure(.notASocket(type)) }

            switch probe(address, kind: .datagram) {
            case .live: throw failure(.addressInUse)
            case .failed(let errno): throw SocketError("probe", address: shown, errno: errno)
            case .stale:
                guard options.replaceStaleSocket else { throw failure(.staleSocket) }
                // Remove only the file we probed, not one a rival just created.
                guard case .success(let now) = Sys.fileStatus(path: path),
                    now.st_dev == before.st_dev, now.st_ino == before.st_ino
                else { continue }
                switch Sys.unlink(path: path) {
                case .success, .failure(.noSuchFileOrDirectory): replacedStale = true
                case .failure(let errno): throw SocketError("unlink", address: shown, errno: errno)
                }
            }
        }

        guard address.kind == .path, let file = BoundFile(path: address.bytes) else { return replacedStale }
        let path = address.bytes
        do throws(SocketError) {
            if handsOver && file.isStillOurs() {
                // lchown never follows a symbolic link someone put in our place.
                let user = options.owner.map { uid_t($0) } ?? uid_t.max
                let group = options.group.map { gid_t($0) } ?? gid_t.max
                if case .failure(let errno) = Sys.changeOwner(path: path, user: user, group: group) {
                    throw SocketError("chown", address: shown, errno: errno)
                }
            }
            if let finalMode { try applyMode(finalMode, to: file, shown: shown) }
        } catch {
            // The bind as asked did not happen: leave no socket file behind.
            file.removeIfStillOurs()
            throw error
        }
        if options.removeOnClose { handle.adoptBoundFile(file) }
        return replacedStale
    }

    /// Widens the mode where the umask narrowed it (Linux), or sets it (macOS).
    private static func applyMode(_ permissions: FilePermissions, to file: BoundFile, shown: String) throws(SocketError) {
        guard case .success(let status) = Sys.fileStatus(path: file.path) else { return }
        let wanted = permissions.rawValue & 0o7777
        guard status.st_mode & 0o7777 != wanted, file.isStillOurs() else { return }
        if case .failure(let errno) = Sys.changeMode(path: file.path, wanted) {
            throw SocketError("chmod", address: shown, errno: errno)
        }
    }
}
