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
        /// A filesystem path: the socket is a file there.
        case path
        /// A Linux abstract name, written `@name`: no file, no permissions.
        case abstract
        /// No name: an unbound socket, or one end of a socket pair.
        case unnamed
    }

    /// The path bytes (without NUL) or the abstract name bytes (without the
    /// leading NUL); empty for an unnamed address.
    public let bytes: [UInt8]
    /// A path, an abstract name, or unnamed.
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
        if pathBytes.isEmpty { throw SocketError("address", address: "", code: .emptyPath) }
        if pathBytes.contains(0) { throw SocketError("address", address: Self.escapePath(pathBytes), code: .containsNUL) }
        if pathBytes.count > Self.maximumPathLength {
            throw SocketError(
                "address", address: Self.escapePath(pathBytes),
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
        let shown = "@" + Self.escapeName(name)
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

    /// Parses the text form that ``description`` prints: `@name` is an
    /// abstract name, anything else is a path.
    ///
    /// A backslash starts an escape in both: `\\` is a backslash and `\xNN`
    /// (two hex digits) is the byte NN, so any byte can be written. A path
    /// that really begins with `@` is written `\x40name` (or `./@name`, which
    /// names the same file but is a different address).
    /// - Throws: ``SocketError`` with `.invalidAddress` for a malformed escape
    ///   or for `(unnamed)`, which names no socket; otherwise what
    ///   ``init(path:)`` or ``init(abstractName:)-(String)`` throws. The error's address
    ///   is `text` as given.
    public init(_ text: String) throws(SocketError) {
        // By byte, not Character: "@" and a combining mark are one Character.
        if text.utf8.first == UInt8(ascii: "@") {
            try self.init(abstractText: Substring(text.unicodeScalars.dropFirst()), shownAs: text)
        } else if text.utf8.elementsEqual(Self.unnamedText.utf8) {
            throw SocketError("address", address: text, code: .invalidAddress(
                "the unnamed address names no socket; a file of that name is written ./\(text)"))
        } else {
            try self.init(pathText: text[...], shownAs: text)
        }
    }

    /// A path in the escaped text form, with no `@` or `(unnamed)` reading:
    /// what follows `unix:` in an ``Endpoint``.
    init(pathText: Substring, shownAs shown: String) throws(SocketError) {
        do {
            try self.init(pathBytes: Self.unescape(pathText, shownAs: shown))
        } catch {
            throw error.naming(shown)
        }
    }

    /// An abstract name in the escaped text form, without its `@`: what follows
    /// `abstract:` in an ``Endpoint``.
    init(abstractText: Substring, shownAs shown: String) throws(SocketError) {
        do {
            try self.init(abstractName: Self.unescape(abstractText, shownAs: shown))
        } catch {
            throw error.naming(shown)
        }
    }

    /// The path, for a path address. Bytes that are not UTF-8 read as U+FFFD
    /// here; ``bytes`` has them exactly.
    public var path: String? {
        kind == .path ? String(decoding: bytes, as: UTF8.self) : nil
    }

    /// The name, for an abstract address.
    public var abstractName: [UInt8]? {
        kind == .abstract ? bytes : nil
    }

    /// The text form: one line of text that ``init(_:)-(String)`` parses back to this
    /// address, for every path and abstract name.
    ///
    /// - A path prints as itself, except that a backslash is `\\`, and bytes
    ///   that are not UTF-8 or are control or format characters are `\xNN`;
    ///   a leading `@` is `\x40`, so it does not read as an abstract name.
    /// - An abstract name prints as `@` and the name, with every byte outside
    ///   printable ASCII (space included) written `\xNN`: names are often binary.
    /// - The unnamed address prints `(unnamed)`, which ``init(_:)-(String)`` rejects
    ///   rather than parse: it names nothing to bind or connect to. A path
    ///   spelled `(unnamed)` prints `\x28unnamed)`.
    public var description: String {
        switch kind {
        case .path:
            let text = escapedText
            if bytes.first == UInt8(ascii: "@") { return #"\x40"# + String(text.unicodeScalars.dropFirst()) }
            if bytes == Array(Self.unnamedText.utf8) { return #"\x28"# + text.dropFirst() }
            return text
        case .abstract: return "@" + escapedText
        case .unnamed: return Self.unnamedText
        }
    }

    /// The bytes in the escaped text form, with nothing added at the front:
    /// ``description`` and ``Endpoint`` decide what a leading `@` means.
    var escapedText: String {
        kind == .path ? Self.escapePath(bytes) : Self.escapeName(bytes)
    }

    private static let unnamedText = "(unnamed)"

    // The text is built as UTF-8 bytes and made a String once: appending to a
    // String scalar by scalar costs several times more.

    private static func escapeName(_ name: [UInt8]) -> String {
        var text: [UInt8] = []
        text.reserveCapacity(name.count)
        for byte in name {
            switch byte {
            case UInt8(ascii: "\\"): text += [byte, byte]
            case 0x21...0x7e: text.append(byte)
            default: appendEscape(byte, to: &text)
            }
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// Keeps the path readable (spaces, letters in any script) and escapes only
    /// what would print as something else or not at all.
    private static func escapePath(_ path: [UInt8]) -> String {
        if path.allSatisfy({ (0x20...0x7e).contains($0) && $0 != UInt8(ascii: "\\") }) {
            return String(decoding: path, as: UTF8.self)  // The usual path: nothing to escape.
        }
        var text: [UInt8] = []
        text.reserveCapacity(path.count)
        var parser = Unicode.UTF8.ForwardParser()
        var input = path.makeIterator()
        var start = 0
        while true {
            let length: Int
            switch parser.parseScalar(from: &input) {
            case .emptyInput:
                return String(decoding: text, as: UTF8.self)
            case .error(let invalidLength):
                length = invalidLength
                for byte in path[start..<start + length] { appendEscape(byte, to: &text) }
            case .valid(let encoded):
                length = encoded.count
                let byte = encoded.first!
                if byte == UInt8(ascii: "\\") {
                    text += [byte, byte]
                } else if (0x20...0x7e).contains(byte) || (length > 1 && isShownAsItself(Unicode.UTF8.decode(encoded))) {
                    text += encoded
                } else {
                    for byte in encoded { appendEscape(byte, to: &text) }
                }
            }
            start += length
        }
    }

    /// Control and format characters (newlines, bidi overrides) would break or
    /// disguise the line, and U+FFFD would read as a byte that is not UTF-8.
    private static func isShownAsItself(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator: false
        default: scalar != "\u{FFFD}"
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    private static func appendEscape(_ byte: UInt8, to text: inout [UInt8]) {
        text += [UInt8(ascii: "\\"), UInt8(ascii: "x"), hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xF)]]
    }

    /// Reverses the escapes; any other use of a backslash is an error rather
    /// than a guess, so a typo cannot silently name another socket.
    private static func unescape(_ text: Substring, shownAs shown: String) throws(SocketError) -> [UInt8] {
        func invalid(_ why: String) -> SocketError {
            SocketError("address", address: shown, code: .invalidAddress(why))
        }
        var input = Array(text.utf8)[...]
        guard input.contains(UInt8(ascii: "\\")) else { return Array(input) }
        var result: [UInt8] = []
        while let byte = input.popFirst() {
            guard byte == UInt8(ascii: "\\") else {
                result.append(byte)
                continue
            }
            switch input.popFirst() {
            case UInt8(ascii: "\\"):
                result.append(byte)
            case UInt8(ascii: "x"):
                let digits = input.prefix(2)
                guard digits.count == 2, let high = hexValue(digits.first!), let low = hexValue(digits.last!) else {
                    let written = digits.allSatisfy { (0x21...0x7e).contains($0) } ? #", not \x"# + String(decoding: digits, as: UTF8.self) : ""
                    throw invalid(#"\x must be followed by two hex digits, as in \x0f"# + written)
                }
                input.removeFirst(2)
                result.append(high << 4 | low)
            case nil:
                throw invalid(#"it ends in a lone \; write \\ for a backslash"#)
            case let other?:
                let escape = (0x21...0x7e).contains(other) ? #"\"# + String(Unicode.Scalar(other)) : "a backslash before a space or non-ASCII character"
                throw invalid(#"\#(escape) is not an escape; write \\ for a backslash or \xNN for a byte"#)
            }
        }
        return result
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension SocketError {
    /// The same error, naming the text the user wrote rather than the bytes it meant.
    fileprivate func naming(_ shown: String) -> SocketError {
        var error = self
        error.address = shown
        return error
    }
}
