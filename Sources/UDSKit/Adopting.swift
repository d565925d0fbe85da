import SystemPackage

// Every socket type can take over a descriptor it was handed: one inherited
// from a parent, received over `SCM_RIGHTS`, or passed by a service manager
// (see ``ActivatedSockets``). The kernel is asked first what the descriptor
// is (a Unix socket of the right type, listening or not), so a wrong one is
// one clear `adopt(descriptor N)` error. The socket then owns the descriptor
// (closes it on close, makes it close-on-exec) but never removes a socket
// file: it did not create one (Go removed inherited files: golang/go#11826).

extension StreamListener {
    /// Takes over a listening stream socket.
    public convenience init(adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: true))
        self.init(handle: handle, address: (try? handle.localAddress()) ?? .unnamed, replacedStaleSocket: false, accessPolicy: accessPolicy)
    }
}

extension SeqpacketListener {
    /// Takes over a listening seqpacket socket.
    public convenience init(adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .seqpacket, listening: true))
        self.init(handle: handle, address: (try? handle.localAddress()) ?? .unnamed, replacedStaleSocket: false, accessPolicy: accessPolicy)
    }
}

extension StreamSocket {
    /// Takes over a connected stream socket (inetd-style activation hands one over).
    public convenience init(adopting descriptor: FileDescriptor) throws(SocketError) {
        self.init(handle: try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: false)))
    }
}

extension SeqpacketSocket {
    /// Takes over a connected seqpacket socket.
    public convenience init(adopting descriptor: FileDescriptor) throws(SocketError) {
        self.init(handle: try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .seqpacket, listening: false)))
    }
}

extension DatagramSocket {
    /// Takes over a datagram socket, bound or not.
    public convenience init(adopting descriptor: FileDescriptor) throws(SocketError) {
        self.init(handle: try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .datagram, listening: false)))
    }
}

extension AsyncStreamListener {
    /// Takes over a listening stream socket; see ``StreamListener/init(adopting:admitting:)``.
    public convenience init(
        adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone,
        on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: true), nonBlocking: true)
        try self.init(adopted: handle, admitting: accessPolicy, on: loops)
    }
}

extension AsyncSeqpacketListener {
    /// Takes over a listening seqpacket socket; see ``SeqpacketListener/init(adopting:admitting:)``.
    public convenience init(
        adopting descriptor: FileDescriptor, admitting accessPolicy: AccessPolicy = .everyone,
        on loops: any EventLoopSource = EventLoop.shared
    ) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .seqpacket, listening: true), nonBlocking: true)
        try self.init(adopted: handle, admitting: accessPolicy, on: loops)
    }
}

extension AsyncStreamSocket {
    /// Takes over a connected stream socket.
    public convenience init(adopting descriptor: FileDescriptor, on loop: EventLoop = .shared) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .stream, listening: false), nonBlocking: true)
        self.init(core: try AsyncCore(handle: handle, loop: loop))
    }
}

extension AsyncDatagramSocket {
    /// Takes over a datagram socket, bound or not.
    public convenience init(adopting descriptor: FileDescriptor, on loop: EventLoop = .shared) throws(SocketError) {
        let handle = try SocketHandle.adopt(descriptor.rawValue, as: .init(kind: .datagram, listening: false), nonBlocking: true)
        self.init(core: try AsyncCore(handle: handle, loop: loop))
    }
}
