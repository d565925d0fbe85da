#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension UnixAddress {
    /// Calls `body` with this address as a `sockaddr_un` and its exact length:
    /// a path is followed by one NUL; an abstract name is not padded.
    func withSockaddr<R, E: Error>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R
    ) throws(E) -> R {
        var storage = sockaddr_un()
        storage.sun_family = sa_family_t(AF_UNIX)
        var length = Platform.sunPathOffset
        withUnsafeMutableBytes(of: &storage.sun_path) { sunPath in
            switch kind {
            case .path:
                sunPath.copyBytes(from: bytes)
                length += bytes.count
                // Only a kernel-reported path can fill sun_path; it then has no NUL.
                if bytes.count < sunPath.count {
                    sunPath[bytes.count] = 0
                    length += 1
                }
            case .abstract:
                sunPath[0] = 0
                UnsafeMutableRawBufferPointer(rebasing: sunPath[1...]).copyBytes(from: bytes)
                length += 1 + bytes.count
            case .unnamed:
                break
            }
        }
        #if canImport(Darwin)
        storage.sun_len = UInt8(length)
        #endif
        let finalLength = length
        return try withUnsafePointer(to: &storage) { (pointer) throws(E) -> R in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(E) -> R in
                try body(address, socklen_t(finalLength))
            }
        }
    }

    /// Reads an address the kernel filled in (`accept`, `getsockname`, `recvfrom`).
    init(storage: sockaddr_un, length: socklen_t) {
        let offset = Platform.sunPathOffset
        let pathLength = min(Int(length), MemoryLayout<sockaddr_un>.size) - offset
        var kind = Kind.unnamed
        var bytes: [UInt8] = []
        withUnsafeBytes(of: storage.sun_path) { sunPath in
            guard pathLength > 0 else { return }
            let used = sunPath.prefix(pathLength)
            if used[0] == 0 {
                // Darwin reports an unnamed peer as a zeroed sun_path of some length;
                // Linux reports an abstract name with a leading NUL.
                if Platform.supportsAbstractNames {
                    kind = .abstract
                    bytes = Array(used.dropFirst())
                }
            } else {
                kind = .path
                bytes = Array(used.prefix { $0 != 0 })
            }
        }
        self.init(kind: kind, bytes: bytes)
    }

    /// Runs `fill` with room for one `sockaddr_un` and reads the address back.
    static func fromKernel<E: Error>(
        _ fill: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) throws(E) -> Void
    ) throws(E) -> UnixAddress {
        var storage = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        try withUnsafeMutablePointer(to: &storage) { (pointer) throws(E) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(E) in
                try fill(address, &length)
            }
        }
        return UnixAddress(storage: storage, length: length)
    }
}
