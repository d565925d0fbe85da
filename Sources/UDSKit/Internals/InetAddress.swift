// IPv4 and IPv6 socket addresses for TCP endpoints: name resolution
// (`getaddrinfo`), numeric text (`getnameinfo`) and the TCP socket options.
// Like Syscalls.swift, this is where the C library is called; everything
// above it sees `InetAddress` and `Result`s.

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

/// An IPv4 or IPv6 socket address, stored as the kernel takes it.
struct InetAddress: Sendable, Hashable {
    /// The `sockaddr_in` or `sockaddr_in6` bytes.
    let bytes: [UInt8]

    init(_ address: UnsafePointer<sockaddr>, length: socklen_t) {
        let count = min(Int(length), MemoryLayout<sockaddr_storage>.size)
        bytes = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(address), count: count))
    }

    /// Calls `body` with this address as a `sockaddr` and its length.
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(bytes.count)) }
        }
    }

    var family: CInt {
        withSockaddr { address, _ in CInt(address.pointee.sa_family) }
    }

    /// The numeric host (`127.0.0.1`, `::1`, `fe80::1%lo`) and the port.
    var hostAndPort: (host: String, port: UInt16) {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: 32)
        let status = withSockaddr { address, length in
            getnameinfo(
                address, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                NI_NUMERICHOST | NI_NUMERICSERV)
        }
        guard status == 0 else { return ("?", 0) }
        let hostText = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let portText = String(decoding: service.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (hostText, UInt16(portText) ?? 0)
    }

    /// Runs `fill` with room for any socket address and reads back what the
    /// kernel wrote (`accept`, `getsockname`, `getpeername`).
    static func fromKernel<E: Error>(
        _ fill: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) throws(E) -> Void
    ) throws(E) -> InetAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return try withUnsafeMutablePointer(to: &storage) { (pointer) throws(E) -> InetAddress in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(E) -> InetAddress in
                try fill(address, &length)
                return InetAddress(address, length: length)
            }
        }
    }
}

extension Sys {
    /// The addresses `host` resolves to for a TCP socket on `port`, in the
    /// resolver's order of preference. `passive` asks for addresses to bind.
    /// The error is the resolver's own message (its codes are not errno values).
    ///
    /// The corresponding C function is `getaddrinfo`.
    static func resolve(host: String, port: UInt16, passive: Bool) -> Result<[InetAddress], ResolutionFailure> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = SocketKind.tcp.rawType
        hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        if status != 0 {
            if status == EAI_SYSTEM { return .failure(ResolutionFailure(Errno(rawValue: errno).description)) }
            return .failure(ResolutionFailure(String(cString: gai_strerror(status))))
        }
        defer { freeaddrinfo(list) }
        var addresses: [InetAddress] = []
        var entry = list
        while let current = entry {
            if let address = current.pointee.ai_addr,
                current.pointee.ai_family == AF_INET || current.pointee.ai_family == AF_INET6
            {
                let resolved = InetAddress(address, length: current.pointee.ai_addrlen)
                if !addresses.contains(resolved) { addresses.append(resolved) }
            }
            entry = current.pointee.ai_next
        }
        if addresses.isEmpty { return .failure(ResolutionFailure("no IPv4 or IPv6 address")) }
        return .success(addresses)
    }

    struct ResolutionFailure: Error {
        let message: String
        init(_ message: String) { self.message = message }
    }

    /// Sends small writes at once instead of waiting to coalesce them (Nagle's
    /// algorithm off): what request/response protocols and relays want.
    static func setNoDelay(_ fd: CInt, _ on: Bool) -> Result<Void, Errno> {
        setOption(fd, level: CInt(IPPROTO_TCP), name: CInt(TCP_NODELAY), CInt(on ? 1 : 0))
    }

    static func noDelay(_ fd: CInt) -> Result<Bool, Errno> {
        getOption(fd, level: CInt(IPPROTO_TCP), name: CInt(TCP_NODELAY), as: CInt.self, initial: 0).map { $0 != 0 }
    }

    /// Lets a restarted server bind its port while connections of the previous
    /// one linger in TIME_WAIT.
    static func setReuseAddress(_ fd: CInt) -> Result<Void, Errno> {
        setOption(fd, level: CInt(SOL_SOCKET), name: CInt(SO_REUSEADDR), CInt(1))
    }
}
