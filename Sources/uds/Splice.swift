#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage
import UDSKit

// The relay's zero-copy path: socket to pipe to socket with splice(2), so the
// bytes never enter this process (Linux). Elsewhere, and wherever splice
// refuses, the relay copies through its buffer.

enum Splice {
    #if os(Linux)
    // Glibc declares splice and pipe2 only under _GNU_SOURCE, which Swift's
    // Glibc module does not define: look them up by name instead.
    private typealias SpliceFunction = @convention(c) (
        CInt, UnsafeMutablePointer<Int64>?, CInt, UnsafeMutablePointer<Int64>?, Int, UInt32
    ) -> Int
    private typealias Pipe2Function = @convention(c) (UnsafeMutablePointer<CInt>?, CInt) -> CInt

    private static let functions: (splice: SpliceFunction, pipe2: Pipe2Function)? = {
        let handle = dlopen(nil, RTLD_NOW)
        guard let splice = dlsym(handle, "splice"), let pipe2 = dlsym(handle, "pipe2") else { return nil }
        return (unsafeBitCast(splice, to: SpliceFunction.self), unsafeBitCast(pipe2, to: Pipe2Function.self))
    }()

    /// linux/splice.h: move pages rather than copy them, where possible.
    private static let moveFlag: UInt32 = 1
    #endif

    /// Whether this platform can splice at all.
    static var isAvailable: Bool {
        #if os(Linux)
        functions != nil
        #else
        false
        #endif
    }

    /// Splices from `source` to `destination` until the end of `source`'s
    /// stream; returns the byte count, or nil if splice cannot be used for
    /// these sockets before any byte moved (the caller then copies).
    /// `moved` is called after each chunk with its size.
    static func copy(
        from source: StreamSocket, named sourceName: String, to destination: StreamSocket, named destinationName: String,
        moved: (Int) -> Void
    ) throws(SocketError) -> Int? {
        #if os(Linux)
        guard let (splice, pipe2) = functions else { return nil }
        var pipeEnds: [CInt] = [0, 0]
        guard pipe2(&pipeEnds, O_CLOEXEC) == 0 else { return nil }
        defer {
            close(pipeEnds[0])
            close(pipeEnds[1])
        }
        let (pipeRead, pipeWrite) = (pipeEnds[0], pipeEnds[1])
        let flags = moveFlag
        return try source.withDescriptor("splice") { (inputDescriptor) throws(SocketError) -> Int? in
            try destination.withDescriptor("splice") { (outputDescriptor) throws(SocketError) -> Int? in
                let (input, output) = (inputDescriptor.rawValue, outputDescriptor.rawValue)
                var total = 0
                while true {
                    let filled = splice(input, nil, pipeWrite, nil, 1 << 16, flags)
                    if filled == 0 { return total }
                    if filled < 0 {
                        let code = Errno(rawValue: errno)
                        if code == .interrupted { continue }
                        // Not a socket splice can read (a message socket, say).
                        if total == 0 && code == .invalidArgument { return nil }
                        throw SocketError("read", address: sourceName, code: .system(code))
                    }
                    var left = filled
                    while left > 0 {
                        let drained = splice(pipeRead, nil, output, nil, left, flags)
                        if drained < 0 {
                            let code = Errno(rawValue: errno)
                            if code == .interrupted { continue }
                            throw SocketError("write", address: destinationName, code: .system(code))
                        }
                        left -= drained
                    }
                    total += filled
                    moved(filled)
                }
            }
        }
        #else
        return nil
        #endif
    }
}
