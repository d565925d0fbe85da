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
        for text in ["./x", "/tmp/some dir/sock", "relative/ü.sock", #"/tmp/back\slash"#, "x"] {
            let address = try UnixAddress(text)
            #expect(address.description == text)
            #expect(try UnixAddress(address.description) == address)
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
        #expect(peer == .unnamed)
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
