import Foundation
import Glibc
import Testing
import UDSKit

@Suite("UnixAddress")
struct UnixAddressTests {
    // MARK: Parsing and the text form

    @Test func parsesARelativePath() throws {
        let address = try UnixAddress("./x")
        #expect(address.kind == .path)
        #expect(address.path == "./x")
        #expect(address.bytes == Array("./x".utf8))
        #expect(address.abstractName == nil)
        #expect(address.description == "./x")
        #expect(try UnixAddress(address.description) == address)
        #expect(try UnixAddress(path: "./x") == address)
    }

    @Test func parsesAnAbstractName() throws {
        let address = try UnixAddress("@name")
        #expect(address.kind == .abstract)
        #expect(address.abstractName == Array("name".utf8))
        #expect(address.bytes == Array("name".utf8))
        #expect(address.path == nil)
        #expect(address.description == "@name")
        #expect(try UnixAddress(abstractName: "name") == address)
    }

    @Test func aPathBeginningWithAtIsWrittenWithDotSlash() throws {
        let address = try UnixAddress("./@name")
        #expect(address.kind == .path)
        #expect(address.path == "./@name")
    }

    @Test func unnamedAddressDescribesItself() {
        #expect(UnixAddress.unnamed.kind == .unnamed)
        #expect(UnixAddress.unnamed.bytes.isEmpty)
        #expect(UnixAddress.unnamed.path == nil)
        #expect(UnixAddress.unnamed.abstractName == nil)
        #expect(UnixAddress.unnamed.description == "(unnamed)")
    }

    @Test func theUnnamedTextIsRejectedNotReadAsAPath() throws {
        let error = try #require(socketError { try UnixAddress("(unnamed)") })
        guard case .invalidAddress(let why) = error.code else {
            Issue.record("expected .invalidAddress, got \(error)")
            return
        }
        #expect(why.contains("names no socket"))
        #expect(why.contains("./(unnamed)"))
        #expect(error.address == "(unnamed)")
        #expect(socketError { try Endpoint("(unnamed)") }?.code == error.code)

        // A file really named so prints escaped, and parses back.
        let file = try UnixAddress(path: "(unnamed)")
        #expect(file.description == #"\x28unnamed)"#)
        #expect(try UnixAddress(file.description) == file)
        #expect(try UnixAddress("./(unnamed)").path == "./(unnamed)")
    }

    @Test func aPathBeginningWithAtPrintsItsAtEscaped() throws {
        let address = try UnixAddress(path: "@x")
        #expect(address.description == #"\x40x"#)
        let parsed = try UnixAddress(address.description)
        #expect(parsed.kind == .path)
        #expect(parsed == address)
        // Only the first byte needs it.
        #expect(try UnixAddress(path: "@x@y").description == #"\x40x@y"#)
        #expect(try UnixAddress(path: "./@x").description == "./@x")
        #expect(Endpoint.unix(address).description == "unix:@x")
        // "@" and a combining mark are one Character, but still an abstract name's "@".
        let marked = try UnixAddress(path: "@\u{301}x")
        #expect(marked.description == #"\x40"# + "\u{301}x")
        #expect(try UnixAddress(marked.description) == marked)
        #expect(try UnixAddress("@\u{301}x").abstractName == Array("\u{301}x".utf8))
        #expect(try Endpoint("unix:\u{301}x") == .unix(UnixAddress(path: "\u{301}x")))
    }

    @Test func pathBytesThatAreNotUTF8PrintAsEscapes() throws {
        let address = try UnixAddress(pathBytes: [0x2F, 0x74, 0xFF, 0x2F, 0xC3, 0x28, 0xE2, 0x82])
        #expect(address.description == #"/t\xff/\xc3(\xe2\x82"#)
        #expect(try UnixAddress(address.description) == address)
        #expect(try UnixAddress(address.description).bytes == address.bytes)
        // A real U+FFFD is escaped too, so it never stands for a lost byte.
        let replacement = try UnixAddress(path: "/a\u{FFFD}b")
        #expect(replacement.description == #"/a\xef\xbf\xbdb"#)
        #expect(try UnixAddress(replacement.description) == replacement)
        // Letters in any script print as themselves.
        #expect(try UnixAddress(path: "/tmp/ümlaut/σ.sock").description == "/tmp/ümlaut/σ.sock")
    }

    @Test func controlAndFormatCharactersInPathsPrintAsEscapes() throws {
        let cases: [(String, String)] = [
            ("a\nb", #"a\x0ab"#),
            ("tab\there", #"tab\x09here"#),
            ("del\u{7F}", #"del\x7f"#),
            ("next\u{85}line", #"next\xc2\x85line"#),     // C1 control
            ("rtl\u{202E}gpj.sock", #"rtl\xe2\x80\xaegpj.sock"#),  // bidi override
            ("line\u{2028}sep", #"line\xe2\x80\xa8sep"#),
            ("/tmp/some dir/sock", "/tmp/some dir/sock"),  // spaces are kept
        ]
        for (path, printed) in cases {
            let address = try UnixAddress(path: path)
            #expect(address.description == printed)
            #expect(try UnixAddress(printed) == address)
        }
    }

    @Test func aBackslashInAPathPrintsDoubled() throws {
        let address = try UnixAddress(path: #"/tmp/back\slash"#)
        #expect(address.description == #"/tmp/back\\slash"#)
        #expect(try UnixAddress(address.description) == address)
        #expect(try UnixAddress(path: #"\"#).description == #"\\"#)
        // A backslash that starts no escape is an error, not a guess.
        let error = try #require(socketError { try UnixAddress(#"/tmp/back\slash"#) })
        #expect(error.address == #"/tmp/back\slash"#)
        #expect(error.description == #"address(/tmp/back\slash): \s is not an escape; write \\ for a backslash or \xNN for a byte"#)
    }

    static let malformedEscapes: [(text: String, reason: String)] = [
        (#"@\x+f"#, #"two hex digits, as in \x0f, not \x+f"#),
        (#"@\x-1"#, #"not \x-1"#),
        (#"@\x+0"#, #"not \x+0"#),
        (#"@\xg0"#, "two hex digits"),
        (#"@\x0g"#, "two hex digits"),
        (#"@\x0"#, "two hex digits"),
        (#"@\x"#, "two hex digits"),
        (#"@\x 1"#, "two hex digits"),
        (#"@\X41"#, #"\X is not an escape"#),
        (#"@a\"#, "lone"),
        (#"@\q"#, #"\q is not an escape"#),
        (#"@\ "#, "not an escape"),
        (#"@\ü"#, "not an escape"),
        (#"/tmp/\x+f"#, "two hex digits"),
        (#"\x4"#, "two hex digits"),
        (#"/tmp/x\"#, "lone"),
    ]

    @Test("escapes take exactly \\\\ or \\x and two hex digits: no signs, no guesses", arguments: malformedEscapes)
    func malformedEscapesAreRejected(text: String, reason: String) throws {
        let error = try #require(socketError { try UnixAddress(text) })
        #expect(error.operation == "address")
        #expect(error.address == text)
        guard case .invalidAddress(let why) = error.code else {
            Issue.record("expected .invalidAddress, got \(error)")
            return
        }
        #expect(why.contains(reason), "\(why)")
        // The same text after an Endpoint prefix fails the same way, naming the whole text.
        let prefixed = text.hasPrefix("@") ? "abstract:" + text.dropFirst() : "unix:" + text
        let viaEndpoint = try #require(socketError { try Endpoint(prefixed) })
        #expect(viaEndpoint.code == error.code)
        #expect(viaEndpoint.address == prefixed)
    }

    @Test func abstractNamesEscapeBytesThatAreNotPrintable() throws {
        let address = try UnixAddress(abstractName: [0x00, 0x41, 0x5C, 0x20, 0xFF, 0x0A, 0x7E])
        #expect(address.description == #"@\x00A\\\x20\xff\x0a~"#)
    }

    @Test func parsesEscapes() throws {
        let address = try UnixAddress(#"@a\x00b\\c\x7fd\xFF"#)
        #expect(address.abstractName == [0x61, 0x00, 0x62, 0x5C, 0x63, 0x7F, 0x64, 0xFF])
    }

    static let roundTripNames: [[UInt8]] = [
        Array("plain-name".utf8),
        [0x00, 0x01, 0x1F, 0x20, 0x7F, 0x80, 0xFF],
        Array(#"back\slash"#.utf8),
        Array(#"\\"#.utf8),
        Array(#"looks\x41escaped"#.utf8),
        Array("trailing backslash\\".utf8),
        Array("\\x".utf8),
        Array("@at and space".utf8),
        Array("ümlaut".utf8),
        [0x00],
        Array(0...255),
    ].map { Array($0.prefix(UnixAddress.maximumAbstractNameLength)) }

    @Test(arguments: roundTripNames)
    func abstractDescriptionRoundTrips(name: [UInt8]) throws {
        let address = try UnixAddress(abstractName: name)
        let text = address.description
        #expect(text.hasPrefix("@"))
        // The text form is printable ASCII only, so it survives logs and shells.
        #expect(text.unicodeScalars.allSatisfy { (0x21...0x7E).contains($0.value) }, "\(text)")
        let parsed = try UnixAddress(text)
        #expect(parsed == address)
        #expect(parsed.abstractName == name)
        #expect(parsed.description == text)
    }

    @Test func pathDescriptionRoundTrips() throws {
        for text in ["./x", "/tmp/some dir/sock", "relative/ü.sock", #"/tmp/back\\slash"#, #"/tmp/\xff"#, "x"] {
            let address = try UnixAddress(text)
            #expect(address.description == text)
            #expect(try UnixAddress(address.description) == address)
        }
    }

    // MARK: The text form round-trips, for any bytes

    // Each case is checked with plain comparisons and only a failure is
    // recorded: an #expect per case would make this the slowest test by far.
    // The loops yield now and then, so that tests waiting on short timeouts
    // are not kept off the few threads Swift Testing runs them on.

    @Test("description parses back to the same address, for thousands of random paths")
    func randomPathsRoundTrip() async throws {
        var generator = SeededGenerator(seed: 0x5EED_0001)
        var coverage = Coverage()
        var failures: [String] = []
        for index in 0..<5000 {
            if index % 100 == 0 { await Task.yield() }
            let bytes = Self.trickyBytes(maximumLength: UnixAddress.maximumPathLength, nul: false, using: &generator)
            let address = try UnixAddress(pathBytes: bytes)
            coverage.note(bytes)
            let text = address.description
            let readsAsAnotherKind = text.utf8.first == UInt8(ascii: "@") || text == "(unnamed)"
            let parsed = try? UnixAddress(text)
            let endpoint = try? Endpoint(Endpoint.unix(address).description)
            if readsAsAnotherKind || !Self.isOneLine(text) || parsed != address || endpoint != .unix(address) {
                failures.append("\(bytes) printed as \(text)")
            }
        }
        #expect(failures.isEmpty, "\(failures.count) failed, such as:\n\(failures.prefix(5).joined(separator: "\n"))")
        coverage.expectReached(maximumLength: UnixAddress.maximumPathLength, nul: false)
    }

    @Test("description parses back to the same address, for thousands of random abstract names")
    func randomAbstractNamesRoundTrip() async throws {
        var generator = SeededGenerator(seed: 0x5EED_0002)
        var coverage = Coverage()
        var failures: [String] = []
        for index in 0..<5000 {
            if index % 100 == 0 { await Task.yield() }
            let bytes = Self.trickyBytes(maximumLength: UnixAddress.maximumAbstractNameLength, nul: true, using: &generator)
            let address = try UnixAddress(abstractName: bytes)
            coverage.note(bytes)
            let text = address.description
            // Printable ASCII only, so it survives logs and shells.
            let printable = text.utf8.first == UInt8(ascii: "@") && text.utf8.allSatisfy { (0x21...0x7E).contains($0) }
            let parsed = try? UnixAddress(text)
            let endpoint = try? Endpoint(Endpoint.unix(address).description)
            let prefixed = try? Endpoint("abstract:" + text.dropFirst())
            if !printable || parsed != address || endpoint != .unix(address) || prefixed != .unix(address) {
                failures.append("\(bytes) printed as \(text)")
            }
        }
        #expect(failures.isEmpty, "\(failures.count) failed, such as:\n\(failures.prefix(5).joined(separator: "\n"))")
        coverage.expectReached(maximumLength: UnixAddress.maximumAbstractNameLength, nul: true)
    }

    /// No line breaks or other control characters: one address, one line of a log.
    private static func isOneLine(_ text: String) -> Bool {
        !text.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    /// Byte strings made to trip a text form: any byte, and more often than
    /// chance the ones with a meaning (`@` first, backslashes, `\x` with and
    /// without digits, signs), valid UTF-8 of every length, and the prefixes an
    /// ``Endpoint`` reads.
    static func trickyBytes(maximumLength: Int, nul: Bool, using generator: inout SeededGenerator) -> [UInt8] {
        let pieces: [[UInt8]] = [
            [UInt8(ascii: "\\")], Array(#"\x"#.utf8), Array(#"\x4"#.utf8), Array(#"\x41"#.utf8), Array(#"\x+f"#.utf8),
            Array("(unnamed)".utf8), Array("unix:".utf8), Array("abstract:".utf8), Array("tcp:".utf8),
            [UInt8(ascii: "@")], [UInt8(ascii: "/")], [UInt8(ascii: " ")], Array("\u{FFFD}".utf8),
        ]
        let length = Int.random(in: 0...3, using: &generator) == 0
            ? maximumLength : Int.random(in: 1...maximumLength, using: &generator)
        var bytes: [UInt8] = Bool.random(using: &generator) ? [UInt8(ascii: "@")] : []
        while bytes.count < length {
            switch Int.random(in: 0..<8, using: &generator) {
            case 0...2: bytes.append(UInt8.random(in: 0...255, using: &generator))
            case 3: bytes.append(UInt8.random(in: 0x20...0x7E, using: &generator))
            case 4...5: bytes += Array(String(randomScalar(using: &generator)).utf8)
            default: bytes += pieces.randomElement(using: &generator)!
            }
        }
        bytes = Array(bytes.prefix(length))
        if !nul { bytes = bytes.map { $0 == 0 ? 1 : $0 } }
        return bytes
    }

    private static func randomScalar(using generator: inout SeededGenerator) -> Unicode.Scalar {
        let special: [UInt32] = [0x85, 0xA0, 0xAD, 0x200B, 0x200E, 0x202E, 0x2028, 0x2029, 0xFEFF, 0xFFFD]
        let ranges: [ClosedRange<UInt32>] = [0x80...0x7FF, 0x800...0xD7FF, 0xE000...0xFFFF, 0x1_0000...0x10_FFFF]
        if Bool.random(using: &generator) { return Unicode.Scalar(special.randomElement(using: &generator)!)! }
        return Unicode.Scalar(UInt32.random(in: ranges.randomElement(using: &generator)!, using: &generator))!
    }

    /// Proof that the random cases include the ones that matter.
    private struct Coverage {
        var leadingAt = 0, backslash = 0, notUTF8 = 0, multibyte = 0, nul = 0, highBytes = Set<UInt8>(), longest = 0

        mutating func note(_ bytes: [UInt8]) {
            if bytes.first == UInt8(ascii: "@") { leadingAt += 1 }
            if bytes.contains(UInt8(ascii: "\\")) { backslash += 1 }
            if bytes.contains(0) { nul += 1 }
            var parser = Unicode.UTF8.ForwardParser()
            var input = bytes.makeIterator()
            var valid = true
            loop: while true {
                switch parser.parseScalar(from: &input) {
                case .emptyInput: break loop
                case .error: valid = false
                case .valid(let encoded): if encoded.count > 1 { multibyte += 1 }
                }
            }
            if !valid { notUTF8 += 1 }
            highBytes.formUnion(bytes.filter { $0 >= 0x80 })
            longest = max(longest, bytes.count)
        }

        func expectReached(maximumLength: Int, nul expectsNUL: Bool, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(expectsNUL ? nul > 100 : nul == 0, sourceLocation: sourceLocation)
            #expect(leadingAt > 1000 && backslash > 1000 && notUTF8 > 1000 && multibyte > 1000, "\(self)", sourceLocation: sourceLocation)
            #expect(highBytes.count == 128, sourceLocation: sourceLocation)
            #expect(longest == maximumLength, sourceLocation: sourceLocation)
        }
    }

    // MARK: Equality

    @Test func equalityAndHashing() throws {
        #expect(try UnixAddress("./x") == UnixAddress("./x"))
        #expect(try UnixAddress("./x").hashValue == UnixAddress("./x").hashValue)
        #expect(try UnixAddress("@x") == UnixAddress("@x"))
        // Same bytes, different kinds: different addresses.
        #expect(try UnixAddress(path: "name") != UnixAddress(abstractName: "name"))
        #expect(try Set([UnixAddress(path: "name"), UnixAddress(abstractName: "name")]).count == 2)
        // Paths are compared as given, not resolved.
        #expect(try UnixAddress("./x") != UnixAddress("x"))
        #expect(try UnixAddress("@x") != UnixAddress("@y"))
        #expect(try UnixAddress(path: "x") != .unnamed)
    }

    // MARK: Path limits

    @Test func maximumPathLengthIsSunPathLessOne() {
        #expect(UnixAddress.maximumPathLength == MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1)
        #expect(UnixAddress.maximumPathLength == 107)
        #expect(UnixAddress.maximumAbstractNameLength == 107)
    }

    /// A path of `length` bytes inside `directory`, made by padding a file name.
    private func paddedPath(in directory: TemporaryDirectory, length: Int) -> String {
        let prefix = directory.path + "/s"
        return prefix + String(repeating: "x", count: length - prefix.utf8.count)
    }

    @Test func pathOfMaximumLengthBindsAndConnects() throws {
        try withTemporaryDirectory { directory in
            let path = paddedPath(in: directory, length: UnixAddress.maximumPathLength)
            #expect(path.utf8.count == 107)
            let address = try UnixAddress(path: path)
            #expect(address.bytes.count == 107)

            let listener = try StreamListener.bind(to: address)
            #expect(fileIdentity(atPath: path)?.isSocket == true)
            #expect(try listener.localAddress() == address)
            let client = try StreamSocket.connect(to: address)
            let (server, _) = try listener.accept()
            #expect(try client.peerAddress() == address)
            #expect(try server.localAddress() == address)
            try client.writeAll(Array("ping".utf8))
            #expect(try server.readExactly(4) == Array("ping".utf8))

            // A datagram socket at the limit works too, and is named as given.
            let datagramPath = paddedPath(in: directory, length: UnixAddress.maximumPathLength - 1) + "d"
            let datagramAddress = try UnixAddress(path: datagramPath)
            let receiver = try DatagramSocket.bind(to: datagramAddress)
            let sender = try DatagramSocket.bind(to: UnixAddress(path: directory.path("sender")))
            try sender.send(Array("hi".utf8), to: datagramAddress)
            let (bytes, receipt) = try receiver.receive()
            #expect(bytes == Array("hi".utf8))
            #expect(receipt.sender == (try UnixAddress(path: directory.path("sender"))))

            try client.close()
            try server.close()
            try listener.close()
            try receiver.close()
            try sender.close()
            #expect(!fileExists(atPath: path))
            #expect(!fileExists(atPath: datagramPath))
        }
    }

    @Test func pathOneByteOverTheLimitIsRejected() throws {
        try withTemporaryDirectory { directory in
            let path = paddedPath(in: directory, length: UnixAddress.maximumPathLength + 1)
            #expect(path.utf8.count == 108)
            let error = try #require(socketError { try UnixAddress(path: path) })
            #expect(error.code == .pathTooLong(length: 108, limit: 107))
            #expect(error.operation == "address")
            #expect(error.address == path)
            #expect(error.errno == nil)
            #expect(error.description.contains(path))
            #expect(error.description.contains("108"))
            #expect(error.description.contains("107"))
            #expect(error.description == "address(\(path)): path is 108 bytes long; the limit is 107")

            // The text parser and the raw-bytes initializer agree.
            #expect(socketError { try UnixAddress(path) }?.code == .pathTooLong(length: 108, limit: 107))
            #expect(socketError { try UnixAddress(pathBytes: Array(path.utf8)) }?.code == .pathTooLong(length: 108, limit: 107))
            // And it is never created in the filesystem by a failed bind attempt.
            #expect(!fileExists(atPath: path))
        }
    }

    @Test func muchLongerPathReportsItsLength() throws {
        let path = "/" + String(repeating: "a", count: 299)
        let error = try #require(socketError { try UnixAddress(path: path) })
        #expect(error.code == .pathTooLong(length: 300, limit: 107))
        #expect(error.description.contains("300"))
    }

    @Test func emptyPathIsRejected() throws {
        let attempts: [() throws -> UnixAddress] = [
            { try UnixAddress(path: "") }, { try UnixAddress("") }, { try UnixAddress(pathBytes: []) },
        ]
        for attempt in attempts {
            let error = try #require(socketError(attempt))
            #expect(error.code == .emptyPath)
            #expect(error.description.contains("empty"))
        }
    }

    @Test func nulInsideAPathIsRejected() throws {
        let error = try #require(socketError { try UnixAddress(path: "/tmp/a\u{0}b") })
        #expect(error.code == .containsNUL)
        #expect(error.description.contains("NUL"))
        #expect(socketError { try UnixAddress(pathBytes: [0x61, 0x00]) }?.code == .containsNUL)
        #expect(socketError { try UnixAddress("a\u{0}") }?.code == .containsNUL)
    }

    // MARK: Abstract name limits

    @Test func abstractNameOfMaximumLengthBindsAndConnects() throws {
        let base = uniqueAbstractName("max")
        let name = base + String(repeating: "n", count: UnixAddress.maximumAbstractNameLength - base.utf8.count)
        #expect(name.utf8.count == 107)
        let address = try UnixAddress(abstractName: name)

        let listener = try StreamListener.bind(to: address)
        #expect(try listener.localAddress() == address)
        let client = try StreamSocket.connect(to: address)
        let (server, peer) = try listener.accept()
        #expect(peer == .unix(.unnamed))
        #expect(try client.peerAddress() == address)
        try server.writeAll(Array("pong".utf8))
        #expect(try client.readExactly(4) == Array("pong".utf8))

        // A name one byte shorter is a different address: names are not padded.
        let shorter = try UnixAddress(abstractName: String(name.dropLast()))
        let refused = try #require(socketError { try StreamSocket.connect(to: shorter) })
        #expect(refused.errno == .connectionRefused)
    }

    @Test func abstractNameOneByteOverTheLimitIsRejected() throws {
        let name = [UInt8](repeating: UInt8(ascii: "n"), count: UnixAddress.maximumAbstractNameLength + 1)
        let error = try #require(socketError { try UnixAddress(abstractName: name) })
        #expect(error.code == .nameTooLong(length: 108, limit: 107))
        #expect(error.description.contains("108"))
        #expect(error.description.contains("107"))
        #expect(socketError { try UnixAddress("@" + String(repeating: "n", count: 108)) }?.code
            == .nameTooLong(length: 108, limit: 107))
        // Escapes count as the byte they stand for: 107 escaped bytes fit.
        let escaped = "@" + String(repeating: #"\x01"#, count: 107)
        #expect(try UnixAddress(escaped).abstractName == [UInt8](repeating: 1, count: 107))
    }

    @Test func abstractNamesMayContainNUL() throws {
        let name: [UInt8] = Array(uniqueAbstractName("nul").utf8) + [0x00, 0x01, 0x00]
        let address = try UnixAddress(abstractName: name)
        let receiver = try DatagramSocket.bind(to: address)
        let sender = try DatagramSocket.unbound()
        try sender.send(Array("x".utf8), to: address)
        let (bytes, _) = try receiver.receive()
        #expect(bytes == Array("x".utf8))
        #expect(try receiver.localAddress() == address)
    }
}
