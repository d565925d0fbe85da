import Logging
import SystemPackage

/// Taking over a descriptor UDSKit did not open (inherited, received over
/// `SCM_RIGHTS`, passed by a service manager): checked with the kernel first,
/// so a wrong descriptor is one clear error, not a confusing failure later.
extension SocketHandle {
    /// What a socket must be to be adopted as a given type.
    struct Expectation {
        var kind: SocketKind
        /// `true`: a listener; `false`: not listening (connected or datagram).
        var listening: Bool

        var text: String {
            switch (kind, listening) {
            case (.datagram, _): "a datagram socket"
            case (let kind, true): "a listening \(kind.name) socket"
            case (let kind, false): "a connected \(kind.name) socket"
            }
        }
    }

    /// Adopts `fd` if the kernel says it is a Unix socket as `expected`
    /// says, and makes it close-on-exec (and non-blocking if asked). The
    /// handle owns it from then on; it never removes a socket file, since it
    /// did not create one.
    static func adopt(
        _ fd: CInt, as expected: Expectation, nonBlocking: Bool = false
    ) throws(SocketError) -> SocketHandle {
        let label = "descriptor \(fd)"
        func refuse(_ why: String) -> SocketError {
            SocketError("adopt", address: label, code: .invalidArgument(why))
        }
        switch Sys.fileStatus(descriptor: fd) {
        case .failure(let errno): throw SocketError("adopt", address: label, errno: errno)
        case .success(let status):
            let type = FileType(mode: status.st_mode)
            guard type == .socket else { throw SocketError("adopt", address: label, code: .notASocket(type)) }
        }
        // A byte stream may be TCP; everything else must be a Unix socket.
        let family = (try? Sys.socketFamily(fd).get()) ?? -1
        let isTCP = Sys.inetFamilies.contains(family)
        guard family == Sys.unixFamily || (isTCP && expected.kind == .stream) else {
            throw refuse("not a Unix domain socket; expected \(expected.text)")
        }
        var kind: SocketKind
        switch Sys.socketKind(fd) {
        case .success(let found?):
            kind = found
            if isTCP {
                guard found == .stream else { throw refuse("not a TCP stream socket; expected \(expected.text)") }
                kind = .tcp
            }
        case .success(nil): throw refuse("a socket of a type UDSKit does not know; expected \(expected.text)")
        case .failure(let errno): throw SocketError("getsockopt(SO_TYPE)", address: label, errno: errno)
        }
        let listening = (try? Sys.isListening(fd).get()) ?? false
        guard kind == expected.kind || (kind == .tcp && expected.kind == .stream),
            kind == .datagram || listening == expected.listening
        else {
            let found = Expectation(kind: kind, listening: listening).text
            throw refuse("\(found), not \(expected.text)")
        }
        if case .failure(let errno) = Sys.setCloseOnExec(fd) { throw SocketError("fcntl", address: label, errno: errno) }
        if nonBlocking, case .failure(let errno) = Sys.setNonBlocking(fd, true) {
            throw SocketError("fcntl", address: label, errno: errno)
        }
        let handle = SocketHandle(descriptor: fd, kind: kind, label: label)
        if let local = try? handle.localEndpoint(), local.unixAddress?.kind != .unnamed { handle.currentLabel = local.description }
        if listening { ReserveDescriptor.shared.ensureHeld() }
        return handle
    }

    /// What an adopted listener reports: the kernel's name for it. It logs
    /// to `logger`, having no ``BindOptions`` to name one.
    func adoptedBinding(admitting policy: AccessPolicy, logger: Logger?) throws(SocketError) -> ListeningBinding {
        if let logger { adoptLogger(logger) }
        if kind == .tcp && policy.admits != nil {
            throw error("adopt", code: .invalidArgument("an access policy needs peer credentials, which TCP connections do not carry"))
        }
        return ListeningBinding(
            endpoint: (try? localEndpoint()) ?? .unix(.unnamed), replacedStaleSocket: false, accessPolicy: policy)
    }
}
