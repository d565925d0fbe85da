import SystemPackage

// TCP on the shared `SocketHandle`: the same ownership, close and read/write
// paths as Unix sockets; only creating, binding and naming differ.

extension SocketHandle {
    /// A new TCP socket of `family`. TCP carries no descriptors, so reads are
    /// plain `recv` calls.
    static func openTCP(family: CInt, label: String) throws(SocketError) -> SocketHandle {
        switch Sys.socket(family: family, kind: .tcp) {
        case .success(let fd):
            let handle = SocketHandle(descriptor: fd, kind: .tcp, label: label)
            handle.keepsDescriptors.store(false, ordering: .relaxed)
            return handle
        case .failure(let errno):
            throw SocketError("socket", address: label, errno: errno)
        }
    }

    /// The addresses `host` resolves to, or an error naming `label`.
    private static func resolve(
        _ host: String, _ port: UInt16, passive: Bool, operation: String, label: String
    ) throws(SocketError) -> [InetAddress] {
        switch Sys.resolve(host: host, port: port, passive: passive) {
        case .success(let addresses): return addresses
        case .failure(let failure): throw SocketError(operation, address: label, code: .nameResolution(failure.message))
        }
    }

    /// Connects to the first of `host`'s addresses that accepts, in the
    /// resolver's order, with `TCP_NODELAY` on. If none does, the error is the
    /// first address's: usually the one that says most.
    static func connectTCP(host: String, port: UInt16, label: String, timeout: Duration?) throws(SocketError) -> SocketHandle {
        let addresses = try resolve(host, port, passive: false, operation: "connect", label: label)
        var firstError: SocketError?
        for address in addresses {
            let handle = try openTCP(family: address.family, label: label)
            do throws(SocketError) {
                _ = try handle.connect(timeout: timeout, interruption: .awaitCompletion) { fd in
                    address.withSockaddr { Sys.connect(fd, $0, $1) }
                }
                try handle.setNoDelay(true)
                return handle
            } catch {
                try? handle.close()
                if firstError == nil { firstError = error }
            }
        }
        throw firstError!
    }

    /// Binds the first address `host` resolves to and listens. `SO_REUSEADDR`
    /// is set, so a restarted server gets its port back at once.
    static func listenTCP(host: String, port: UInt16, label: String, options: BindOptions) throws(SocketError) -> SocketHandle {
        let address = try resolve(host, port, passive: true, operation: "bind", label: label)[0]
        let handle = try openTCP(family: address.family, label: label)
        do throws(SocketError) {
            try handle.call("setsockopt(SO_REUSEADDR)") { Sys.setReuseAddress($0) }
            try handle.call("bind") { fd in address.withSockaddr { Sys.bind(fd, $0, $1) } }
            try handle.listen(options: options)
        } catch {
            try? handle.close()
            throw error
        }
        return handle
    }

    /// Accepts one TCP connection, with `TCP_NODELAY` on, and its peer's address.
    func acceptTCP() throws(SocketError) -> (SocketHandle, InetAddress) {
        try acceptRecovering { () throws(SocketError) in try acceptTCPOnce() }
    }

    private func acceptTCPOnce() throws(SocketError) -> (SocketHandle, InetAddress) {
        var accepted: CInt = -1
        let peer = try withDescriptor("accept") { (fd) throws(SocketError) in
            try InetAddress.fromKernel { (address, length) throws(SocketError) in
                switch Sys.accept(fd, address, length) {
                case .success(let newFD): accepted = newFD
                case .failure(let errno): throw error("accept", errno)
                }
            }
        }
        let connection = SocketHandle(descriptor: accepted, kind: .tcp, label: currentLabel)
        connection.keepsDescriptors.store(false, ordering: .relaxed)
        do throws(SocketError) {
            try connection.setNoDelay(true)
        } catch {
            try? connection.close()
            throw error
        }
        return (connection, peer)
    }

    func inetLocalAddress() throws(SocketError) -> InetAddress {
        try withDescriptor("getsockname") { (fd) throws(SocketError) in
            try InetAddress.fromKernel { (address, length) throws(SocketError) in
                if case .failure(let errno) = Sys.localAddress(fd, address, length) { throw error("getsockname", errno) }
            }
        }
    }

    func inetPeerAddress() throws(SocketError) -> InetAddress {
        try withDescriptor("getpeername") { (fd) throws(SocketError) in
            try InetAddress.fromKernel { (address, length) throws(SocketError) in
                if case .failure(let errno) = Sys.peerAddress(fd, address, length) { throw error("getpeername", errno) }
            }
        }
    }

    func setNoDelay(_ on: Bool) throws(SocketError) {
        try call("setsockopt(TCP_NODELAY)") { Sys.setNoDelay($0, on) }
    }

    func noDelay() throws(SocketError) -> Bool {
        try call("getsockopt(TCP_NODELAY)") { Sys.noDelay($0) }
    }
}
