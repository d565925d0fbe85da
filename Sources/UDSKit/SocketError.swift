import SystemPackage

/// The one error UDSKit throws: what was being done, to which address, and why.
///
/// Its description reads as one line a person can act on:
///
///     bind(./uds_socket): a server is already listening there
///     connect(/run/app.sock): connection refused (nothing is listening there)
///     address(/very/long/...): path is 131 bytes; the limit is 107
public struct SocketError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Why an operation failed.
    public enum Code: Hashable, Sendable {
        /// The kernel refused the call with this error number.
        case system(Errno)
        /// A live server is bound to the address; it was left untouched.
        case addressInUse
        /// The path exists and is not a socket (the `ls -l` type letter is given);
        /// it was left untouched.
        case notASocket(FileType)
        /// A stale socket file is at the path and replacing it was not allowed.
        case staleSocket
        /// A path longer than the platform's `sun_path` holds.
        case pathTooLong(length: Int, limit: Int)
        /// An abstract name longer than the platform's `sun_path` holds.
        case nameTooLong(length: Int, limit: Int)
        /// A path or name with a NUL byte inside, which `sun_path` cannot carry.
        case containsNUL
        /// An empty path; use ``UnixAddress/unnamed`` for "no address".
        case emptyPath
        /// The address text could not be understood.
        case invalidAddress(String)
        /// The socket was closed before or during the operation.
        case closed
        /// A read or write timeout expired.
        case timedOut
        /// The peer closed the connection before the expected bytes arrived.
        case unexpectedEndOfStream(received: Int, expected: Int)
        /// A message did not fit in the buffer and was cut; `length` is its full
        /// length where the platform reports it.
        case messageTruncated(length: Int?, capacity: Int)
        /// An argument the operation cannot use.
        case invalidArgument(String)
        /// More descriptors than one message can carry.
        case tooManyDescriptors(count: Int, limit: Int)
        /// The sender attached more descriptors than there was room for
        /// (`MSG_CTRUNC`); every one that did arrive was closed.
        case descriptorsTruncated
        /// Descriptors arrived with data read by a plain read, more than a
        /// socket keeps for a later ``StreamSocket/receiveWithDescriptors(into:timeout:)``;
        /// the excess was closed.
        case descriptorsDiscarded(count: Int)
        /// This platform lacks the feature (seqpacket or abstract names on macOS).
        case unsupported(String)
        /// A TCP host name could not be resolved; the resolver's message.
        case nameResolution(String)
        /// A frame longer than its format allows (``FrameFormat/maximumLength``,
        /// or what the length prefix can express); `length` is `nil` when it is
        /// not known: no delimiter within the limit, or a prefix beyond `Int`.
        /// A reader closes the stream after this: what follows cannot be trusted.
        case frameTooLong(length: Int?, limit: Int)
        /// A frame to be written contains its format's delimiter (at `offset`),
        /// so the peer would read it as two frames.
        case frameContainsDelimiter(UInt8, offset: Int)
    }

    /// The operation, named after its C call where there is one: `bind`, `connect`, `read`.
    public var operation: String
    /// The address or path involved, as the user wrote it, when there is one.
    public var address: String?
    /// Why it failed.
    public var code: Code

    /// An error for `operation` on `address`, for code that reports its own
    /// failures the way UDSKit does.
    /// - Parameters:
    ///   - operation: What failed, such as `bind` or `connect`.
    ///   - address: The address or path involved, if any, as the user wrote it.
    ///   - code: Why it failed.
    public init(_ operation: String, address: String? = nil, code: Code) {
        self.operation = operation
        self.address = address
        self.code = code
    }

    init(_ operation: String, address: String? = nil, errno: Errno) {
        self.init(operation, address: address, code: .system(errno))
    }

    /// The kernel's error number, when the kernel refused the call.
    public var errno: Errno? {
        if case .system(let errno) = code { return errno }
        return nil
    }

    /// One line for people: `bind(./uds_socket): a server is already listening there`.
    public var description: String {
        let subject = address.map { "\(operation)(\($0))" } ?? operation
        return "\(subject): \(reason)"
    }

    /// The cause alone, without operation and address.
    public var reason: String {
        switch code {
        case .system(let errno): return Self.explain(errno, operation: operation)
        case .addressInUse: return "a server is already listening there"
        case .notASocket(let type):
            return "the path exists and is a \(type.name), not a socket; refusing to replace it"
        case .staleSocket: return "a stale socket file is there and replacing it was not allowed"
        case .pathTooLong(let length, let limit):
            return "path is \(length) bytes long; the limit is \(limit)"
        case .nameTooLong(let length, let limit):
            return "abstract name is \(length) bytes long; the limit is \(limit)"
        case .containsNUL: return "contains a NUL byte"
        case .emptyPath: return "the path is empty"
        case .invalidAddress(let why): return why
        case .closed: return "the socket is closed"
        case .timedOut: return "timed out"
        case .unexpectedEndOfStream(let received, let expected):
            return "the peer closed the connection after \(received) of \(expected) bytes"
        case .messageTruncated(let length, let capacity):
            let size = length.map { "\($0) bytes" } ?? "longer"
            return "message truncated: it was \(size), the buffer holds \(capacity)"
        case .invalidArgument(let why): return why
        case .tooManyDescriptors(let count, let limit):
            return "\(count) descriptors in one message; the limit is \(limit)"
        case .descriptorsTruncated:
            return "the sender attached more descriptors than there was room for; those that arrived were closed"
        case .descriptorsDiscarded(let count):
            return "\(count) descriptors arrived with plain reads and were never taken; they were closed"
        case .unsupported(let what): return "\(what) not supported on this platform"
        case .nameResolution(let why): return "cannot resolve the host name: \(Self.lowercasedFirst(why))"
        case .frameTooLong(let length?, let limit):
            return "frame is \(length) bytes long; the limit is \(limit)"
        case .frameTooLong(nil, let limit):
            return "frame is longer than the limit of \(limit) bytes"
        case .frameContainsDelimiter(let delimiter, let offset):
            return "frame contains its delimiter (byte 0x\(delimiter < 16 ? "0" : "")\(String(delimiter, radix: 16))) at offset \(offset)"
        }
    }

    private static func explain(_ errno: Errno, operation: String) -> String {
        let text = lowercasedFirst(errno.description)
        switch errno {
        case .connectionRefused where operation == "connect":
            return "\(text) (nothing is listening there)"
        case .noSuchFileOrDirectory where operation == "connect":
            return "\(text) (no socket at this path)"
        case .addressInUse where operation == "bind":
            return "address already in use"
        default:
            return text
        }
    }

    private static func lowercasedFirst(_ text: String) -> String {
        guard let first = text.first, first.isUppercase else { return text }
        // Keep acronyms such as "I/O" as they are.
        if let second = text.dropFirst().first, second.isUppercase || !second.isLetter { return text }
        return first.lowercased() + text.dropFirst()
    }
}

/// The type of a file, as `ls -l` shows it in its first column.
public enum FileType: Hashable, Sendable {
    /// A regular file (`-`).
    case regular
    /// A directory (`d`).
    case directory
    /// A symbolic link (`l`), never followed.
    case symbolicLink
    /// A character device (`c`).
    case characterDevice
    /// A block device (`b`).
    case blockDevice
    /// A socket file (`s`).
    case socket
    /// A named pipe (`p`).
    case fifo
    /// Any other type the system reports.
    case unknown

    /// The `ls -l` letter: `-` `d` `l` `c` `b` `s` `p`.
    public var letter: Character {
        switch self {
        case .regular: "-"
        case .directory: "d"
        case .symbolicLink: "l"
        case .characterDevice: "c"
        case .blockDevice: "b"
        case .socket: "s"
        case .fifo: "p"
        case .unknown: "?"
        }
    }

    /// The type in words, for messages: `regular file`, `named pipe`.
    public var name: String {
        switch self {
        case .regular: "regular file"
        case .directory: "directory"
        case .symbolicLink: "symbolic link"
        case .characterDevice: "character device"
        case .blockDevice: "block device"
        case .socket: "socket"
        case .fifo: "named pipe"
        case .unknown: "file of unknown type"
        }
    }

}
