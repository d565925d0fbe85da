import SystemPackage

// TCP on the shared `SocketHandle`: the same ownership, close and read/write
// paths as Unix sockets; only creating, binding and naming differ.

extension SocketHandle {
    /// A new TCP socket of `family`. TCP carries no descriptors, so reads are
    /// plain `recv` calls.
    static func openTCP(family: CInt, label: String, nonBlocking: Bool = false) throws(SocketError) -> SocketHandle {
        switch Sys.socket(family: family, kind: .tcp, nonBlocking: nonBlocking) {
        case .success(let fd):
            let handle = SocketHandle(descriptor: fd, kind: .tcp, label: label)
            handle.keepsDescriptors.store(false, ordering: .relaxed)
            return handle
        case .failure(let errno):
            throw SocketError("socket", address: label, errno: errno)
        }
    }

    /// The addresses `host` resolves to, or an error naming `label`.
    static func resolve(
        _ host: String, _ port: UInt16, passive: Bool, operation: String, label: String
    ) throws(SocketError) -> [InetAddress] {
        switch Sys.resolve(host: host, port: port, passive: passive) {
        case .success(let addresses): return addresses
        case .failure(let failure): throw SocketError(operation, address: label, code: .nameResolution(failure.message))
        }
    }

    /// Binds the first address `host` resolves to and listens. `SO_REUSEADDR`
    /// is set, so a restarted server gets its port back at once.
    static func listenTCP(
        host: String, port: UInt16, label: String, options: BindOptions, nonBlocking: Bool
    ) throws(SocketError) -> SocketHandle {
        let address = try resolve(host, port, passive: true, operation: "bind", label: label)[0]
        let handle = try openTCP(family: address.family, label: label, nonBlocking: nonBlocking)
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
