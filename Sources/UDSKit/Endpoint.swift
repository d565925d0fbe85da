/// Where a byte stream goes: a Unix socket (a path or an abstract name) or a
/// TCP host and port.
///
/// A program written for one moves to the other by changing the address
/// text, since ``StreamSocket`` and ``StreamListener`` (and their async twins)
/// work the same over both:
///
///     let service = try Endpoint("/run/app.sock")       // or "tcp:db.example:5432"
///     let connection = try StreamSocket.connect(to: service)
///
/// The text forms, which ``init(_:)`` parses and ``description`` prints:
///
/// | Text | Endpoint |
/// |---|---|
/// | `/run/app.sock`, `./uds_socket` | a Unix socket path |
/// | `unix:PATH` | a path, even one that starts with `@` or looks like `tcp:...` |
/// | `@name`, `abstract:name` | a Linux abstract name |
/// | `tcp:HOST:PORT` | TCP; `tcp:[::1]:PORT` for an IPv6 address |
/// | `tcp:PORT` | TCP on the IPv4 loopback address, `127.0.0.1` |
///
/// In paths and names, `\\` is a backslash and `\xNN` the byte NN, as in
/// ``UnixAddress/init(_:)-(String)``.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// The two kinds of endpoint.
    public enum Kind: Hashable, Sendable {
        /// A Unix socket address: a path or an abstract name.
        case unix(UnixAddress)
        /// A host name or numeric address (IPv6 without brackets) and a port.
        case tcp(host: String, port: UInt16)
    }

    /// Unix or TCP, with the address.
    public let kind: Kind

    /// An endpoint of the given kind; ``unix(_:)`` and ``tcp(host:port:)``
    /// say the same more briefly.
    public init(kind: Kind) {
        self.kind = kind
    }

    /// A Unix socket address.
    public static func unix(_ address: UnixAddress) -> Endpoint {
        Endpoint(kind: .unix(address))
    }

    /// A TCP host and port. The host is resolved when connecting or binding;
    /// port 0 in a listener means "any free port" (see ``Socket/localEndpoint()``).
    public static func tcp(host: String, port: UInt16) -> Endpoint {
        Endpoint(kind: .tcp(host: host, port: port))
    }

    /// The host `tcp:PORT` means, and what listeners bind when no host is named:
    /// the IPv4 loopback address, reachable from this machine only.
    public static let loopbackHost = "127.0.0.1"

    /// Parses the text form (see the table above).
    /// - Throws: ``SocketError`` with operation `address`, naming the text:
    ///   `.invalidAddress` for a malformed TCP address, or what ``UnixAddress``
    ///   throws for a bad path or name.
    public init(_ text: String) throws(SocketError) {
        if let rest = text.dropPrefix("unix:") {
            self = .unix(try UnixAddress(pathText: rest, shownAs: text))
        } else if let rest = text.dropPrefix("abstract:") {
            self = .unix(try UnixAddress(abstractText: rest, shownAs: text))
        } else if let rest = text.dropPrefix("tcp:") {
            let (host, port) = try Self.parseHostAndPort(rest, text: text, defaultHost: Self.loopbackHost)
            self = .tcp(host: host, port: port)
        } else {
            self = .unix(try UnixAddress(text))
        }
    }

    /// Splits `HOST:PORT`, `[IPv6]:PORT` or (with a default host) `PORT`.
    private static func parseHostAndPort(
        _ rest: Substring, text: String, defaultHost: String?
    ) throws(SocketError) -> (host: String, port: UInt16) {
        func invalid(_ why: String) -> SocketError {
            SocketError("address", address: text, code: .invalidAddress(why))
        }
        let host: String
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw invalid("an IPv6 address in [ has no closing ]") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            guard after.hasPrefix(":") else { throw invalid("expected :PORT after the ]") }
            portText = after.dropFirst()
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
            if host.contains(":") {
                throw invalid("write an IPv6 address in brackets: tcp:[\(host)]:\(portText)")
            }
        } else if let defaultHost {
            host = defaultHost
            portText = rest
        } else {
            throw invalid("expected HOST:PORT")
        }
        if host.isEmpty { throw invalid("the host is empty") }
        // Brackets only delimit an IPv6 address; in a host they could not print back.
        if host.contains("[") || host.contains("]") { throw invalid("a host cannot contain [ or ]") }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), let port = UInt16(portText) else {
            throw invalid("the port must be a number from 0 to 65535, not \"\(portText)\"")
        }
        return (host, port)
    }

    /// The Unix address, for a Unix endpoint.
    public var unixAddress: UnixAddress? {
        if case .unix(let address) = kind { return address }
        return nil
    }

    /// Whether this is a TCP endpoint.
    public var isTCP: Bool {
        if case .tcp = kind { return true }
        return false
    }

    /// The text form, which ``init(_:)`` parses back: `./uds_socket`, `@name`,
    /// `tcp:127.0.0.1:8080`, `tcp:[::1]:8080`. A path that would read as
    /// something else (`@x`, `tcp:1`, `(unnamed)`) is written `unix:PATH`.
    /// Paths and names use ``UnixAddress``'s escapes, after a prefix too.
    public var description: String {
        switch kind {
        case .unix(let address):
            guard address.kind == .path else { return address.description }
            let text = address.escapedText
            let ambiguous = text.utf8.first == UInt8(ascii: "@") || text.utf8.elementsEqual(UnixAddress.unnamed.description.utf8)
                || ["unix:", "abstract:", "tcp:"].contains { text.dropPrefix($0) != nil }
            return ambiguous ? "unix:" + text : text
        case .tcp(let host, let port):
            return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }
}

extension String {
    /// The rest after the ASCII `prefix`, compared without regard to case; nil
    /// if the text does not start with it. By scalar, not Character, so a
    /// combining mark after the colon stays in the rest.
    fileprivate func dropPrefix(_ prefix: String) -> Substring? {
        func lowercased(_ scalar: Unicode.Scalar) -> UInt32 {
            (0x41...0x5A).contains(scalar.value) ? scalar.value + 0x20 : scalar.value
        }
        let head = unicodeScalars.prefix(prefix.unicodeScalars.count)
        guard head.count == prefix.unicodeScalars.count,
            zip(head, prefix.unicodeScalars).allSatisfy({ lowercased($0) == lowercased($1) })
        else { return nil }
        return Substring(unicodeScalars[head.endIndex...])
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
