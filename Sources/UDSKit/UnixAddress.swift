/// The address of a Unix domain socket: a filesystem path, a Linux abstract
/// name, or no name at all.
///
/// Addresses are validated when they are made, so a path that does not fit in
/// `sun_path` fails here, with its length and the limit, and is never truncated.
///
///     let server = try UnixAddress(path: "./uds_socket")
///     let hidden = try UnixAddress("@my-service")   // Linux abstract name
///     print(server)                                 // ./uds_socket
public struct UnixAddress: Hashable, Sendable, CustomStringConvertible {
    /// Which of the three forms an address takes.
    public enum Kind: Hashable, Sendable {
        case path
        case abstract
        case unnamed
    }

    /// The path bytes (without NUL) or the abstract name bytes (without the
    /// leading NUL); empty for an unnamed address.
    public let bytes: [UInt8]
    public let kind: Kind

    /// Trusts `bytes`: for addresses the kernel reported, which may use all of
    /// `sun_path` (Linux accepts a 108-byte path without NUL from other programs).
    init(kind: Kind, bytes: [UInt8]) {
        self.kind = kind
        self.bytes = bytes
    }

    /// The longest path a socket can bind or connect to: `sun_path` less its
    /// terminating NUL (107 bytes on Linux, 103 on macOS).
    public static var maximumPathLength: Int { Platform.sunPathCapacity - 1 }

    /// The longest abstract name: `sun_path` less the leading NUL (107 on Linux).
    public static var maximumAbstractNameLength: Int { Platform.sunPathCapacity - 1 }

    /// An address with no name: what an unbound client socket reports.
    public static let unnamed = UnixAddress(kind: .unnamed, bytes: [])

    /// A filesystem path.
    /// - Throws: ``SocketError`` with `.emptyPath`, `.containsNUL` or
    ///   `.pathTooLong(length:limit:)`, naming the path.
    public init(path: String) throws(SocketError) {
        try self.init(pathBytes: Array(path.utf8))
    }

    /// A filesystem path given as raw bytes (paths need not be UTF-8).
    public init(pathBytes: [UInt8]) throws(SocketError) {
        let shown = String(decoding: pathBytes, as: UTF8.self)
        if pathBytes.isEmpty { throw SocketError("address", address: "", code: .emptyPath) }
        if pathBytes.contains(0) { throw SocketError("address", address: shown, code: .containsNUL) }
        if pathBytes.count > Self.maximumPathLength {
            throw SocketError(
                "address", address: shown,
                code: .pathTooLong(length: pathBytes.count, limit: Self.maximumPathLength))
        }
        self.init(kind: .path, bytes: pathBytes)
    }

    /// A Linux abstract name: it lives in the network namespace, not the
    /// filesystem, so no file is created and file permissions do not apply.
    /// Its length is exactly the name's; it is not padded with NULs.
    /// - Throws: ``SocketError`` with `.unsupported` off Linux, or
    ///   `.nameTooLong(length:limit:)`.
    public init(abstractName: some Sequence<UInt8>) throws(SocketError) {
        let name = Array(abstractName)
        let shown = "@" + Self.escape(name)
        guard Platform.supportsAbstractNames else {
            throw SocketError("address", address: shown, code: .unsupported("abstract socket addresses are"))
        }
        if name.count > Self.maximumAbstractNameLength {
            throw SocketError(
                "address", address: shown,
                code: .nameTooLong(length: name.count, limit: Self.maximumAbstractNameLength))
        }
        self.init(kind: .abstract, bytes: name)
    }

    /// An abstract name given as text.
    public init(abstractName: String) throws(SocketError) {
        try self.init(abstractName: Array(abstractName.utf8))
    }

    /// Parses the text form: `@name` is an abstract name (with `\xNN` and `\\`
    /// escapes for bytes that are not printable), anything else is a path.
    /// A path that really begins with `@` can be written `./@name`.
    public init(_ text: String) throws(SocketError) {
        if text.hasPrefix("@") {
            try self.init(abstractName: Self.unescape(text.dropFirst()))
        } else {
            try self.init(path: text)
        }
    }

    /// The path, for a path address.
    public var path: String? {
        kind == .path ? String(decoding: bytes, as: UTF8.self) : nil
    }

    /// The name, for an abstract address.
    public var abstractName: [UInt8]? {
        kind == .abstract ? bytes : nil
    }

    /// The text form, which ``init(_:)`` parses back: the path, `@name`, or
    /// `(unnamed)`.
    public var description: String {
        switch kind {
        case .path: String(decoding: bytes, as: UTF8.self)
        case .abstract: "@" + Self.escape(bytes)
        case .unnamed: "(unnamed)"
        }
    }

    private static func escape(_ name: [UInt8]) -> String {
        var text = ""
        for byte in name {
            switch byte {
            case UInt8(ascii: "\\"): text += "\\\\"
            case 0x21...0x7e: text.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16)
                text += "\\x" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return text
    }

    private static func unescape(_ text: Substring) -> [UInt8] {
        var result: [UInt8] = []
        var input = Array(text.utf8)[...]
        while let byte = input.popFirst() {
            guard byte == UInt8(ascii: "\\"), let next = input.first else {
                result.append(byte)
                continue
            }
            if next == UInt8(ascii: "\\") {
                input.removeFirst()
                result.append(byte)
            } else if next == UInt8(ascii: "x"), input.count >= 3,
                let value = UInt8(String(decoding: input.dropFirst().prefix(2), as: UTF8.self), radix: 16)
            {
                input.removeFirst(3)
                result.append(value)
            } else {
                result.append(byte)
            }
        }
        return result
    }
}
