import Foundation
import Glibc
import Testing
@testable import UDSKit

// Endpoint parsing, Connection and StreamListener over Unix sockets and TCP
// (loopback only: 127.0.0.1 and ::1), SocketFileStatus.probe, FileStatus and
// the socket table.

@Suite("Endpoint parsing")
struct EndpointParsingTests {
    struct Case: CustomStringConvertible, Sendable {
        let text: String
        let kind: Endpoint.Kind
        /// What `description` prints (and parses back to the same endpoint).
        let printed: String
        var description: String { text }
    }

    static let cases: [Case] = [
        Case(text: "/run/app.sock", kind: .unix(try! UnixAddress(path: "/run/app.sock")), printed: "/run/app.sock"),
        Case(text: "./uds_socket", kind: .unix(try! UnixAddress(path: "./uds_socket")), printed: "./uds_socket"),
        Case(text: "unix:/tmp/x.sock", kind: .unix(try! UnixAddress(path: "/tmp/x.sock")), printed: "/tmp/x.sock"),
        Case(text: "unix:@file", kind: .unix(try! UnixAddress(path: "@file")), printed: "unix:@file"),
        Case(text: "unix:tcp:1", kind: .unix(try! UnixAddress(path: "tcp:1")), printed: "unix:tcp:1"),
        Case(text: #"\x40file"#, kind: .unix(try! UnixAddress(path: "@file")), printed: "unix:@file"),
        Case(text: "unix:(unnamed)", kind: .unix(try! UnixAddress(path: "(unnamed)")), printed: "unix:(unnamed)"),
        Case(text: #"unix:a\\b"#, kind: .unix(try! UnixAddress(path: #"a\b"#)), printed: #"a\\b"#),
        Case(text: #"unix:/tmp/a\x0ab"#, kind: .unix(try! UnixAddress(path: "/tmp/a\nb")), printed: #"/tmp/a\x0ab"#),
        Case(text: #"unix:tcp:\xff"#, kind: .unix(try! UnixAddress(pathBytes: Array("tcp:".utf8) + [0xFF])), printed: #"unix:tcp:\xff"#),
        Case(text: "@name", kind: .unix(try! UnixAddress(abstractName: "name")), printed: "@name"),
        Case(text: #"abstract:a\x00"#, kind: .unix(try! UnixAddress(abstractName: [0x61, 0x00])), printed: #"@a\x00"#),
        Case(text: "abstract:name", kind: .unix(try! UnixAddress(abstractName: "name")), printed: "@name"),
        Case(text: "tcp:127.0.0.1:8080", kind: .tcp(host: "127.0.0.1", port: 8080), printed: "tcp:127.0.0.1:8080"),
        Case(text: "TCP:localhost:80", kind: .tcp(host: "localhost", port: 80), printed: "tcp:localhost:80"),
        Case(text: "tcp:[::1]:9", kind: .tcp(host: "::1", port: 9), printed: "tcp:[::1]:9"),
        Case(text: "tcp:8080", kind: .tcp(host: "127.0.0.1", port: 8080), printed: "tcp:127.0.0.1:8080"),
        Case(text: "tcp:0", kind: .tcp(host: "127.0.0.1", port: 0), printed: "tcp:127.0.0.1:0"),
        Case(text: "tcp:db.internal:65535", kind: .tcp(host: "db.internal", port: 65535), printed: "tcp:db.internal:65535"),
    ]

    @Test("parses the text forms, and description parses back", arguments: cases)
    func parses(_ test: Case) throws {
        let endpoint = try Endpoint(test.text)
        #expect(endpoint.kind == test.kind)
        #expect(endpoint.description == test.printed)
        #expect(try Endpoint(endpoint.description) == endpoint)
    }

    @Test func factoriesAndAccessors() throws {
        let unix = Endpoint.unix(try UnixAddress(path: "/tmp/a"))
        #expect(unix.unixAddress?.path == "/tmp/a")
        #expect(!unix.isTCP)
        let tcp = Endpoint.tcp(host: "::1", port: 5)
        #expect(tcp.isTCP)
        #expect(tcp.unixAddress == nil)
        #expect(tcp.description == "tcp:[::1]:5")
    }

    static let malformed: [(String, String)] = [
        ("tcp:", "port"),
        ("tcp:host:", "port"),
        ("tcp:host:99999", "port"),
        ("tcp:host:-1", "port"),
        ("tcp:host:8o", "port"),
        ("tcp::80", "host is empty"),
        ("tcp:::1:80", "brackets"),
        ("tcp:[::1:80", "closing ]"),
        ("tcp:[::1]80", ":PORT"),
        // Found by the fuzzer: host "[x" printed as tcp:[x:0, which does not parse.
        ("tcp:[[x]:0", "cannot contain [ or ]"),
        ("tcp:a]b:80", "cannot contain [ or ]"),
    ]

    @Test("malformed TCP addresses fail with a reason, naming the text", arguments: malformed)
    func malformedTCP(_ text: String, _ reason: String) {
        let error = socketError { try Endpoint(text) }
        #expect(error?.operation == "address")
        #expect(error?.address == text)
        guard case .invalidAddress(let why)? = error?.code else {
            Issue.record("expected .invalidAddress, got \(String(describing: error))")
            return
        }
        #expect(why.contains(reason), "\(why)")
    }

    @Test func badUnixAddressesFailAsUnixAddressDoes() {
        #expect(socketError { try Endpoint("unix:") }?.code == .emptyPath)
        let long = "/tmp/" + String(repeating: "x", count: 200)
        #expect(socketError { try Endpoint(long) }?.code == .pathTooLong(length: 205, limit: UnixAddress.maximumPathLength))
        #expect(socketError { try Endpoint("unix:" + long) }?.code == .pathTooLong(length: 205, limit: UnixAddress.maximumPathLength))
    }
}

@Suite("StreamSocket and StreamListener over endpoints")
struct ConnectionTests {
    /// The same client and server code, whatever the endpoint: the point of
    /// `Endpoint`. The server answers each request with its reversal, then
    /// half-closes after the client did.
    private func exchange(over endpoint: Endpoint) throws -> StreamListener {
        let listener = try StreamListener.bind(to: endpoint)
        let bound = try listener.localEndpoint()
        let server = BackgroundThread { () throws -> [UInt8] in
            let (connection, _) = try listener.accept()
            defer { try? connection.close() }
            try connection.setReadTimeout(.seconds(20))
            var received: [UInt8] = []
            while true {
                let chunk = try connection.read(upTo: 4096)
                if chunk.isEmpty { break }
                received += chunk
            }
            try connection.writeAll(Array(received.reversed()))
            try connection.shutdown(.write)
            return received
        }
        let client = try StreamSocket.connect(to: bound, timeout: .seconds(5))
        defer { try? client.close() }
        try client.setReadTimeout(.seconds(20))
        let request = Array("hello, endpoint".utf8)
        try client.writeAll(request)
        try client.shutdown(.write)
        #expect(try client.readExactly(request.count) == Array(request.reversed()))
        #expect(try client.read(upTo: 10).isEmpty)
        #expect(try server.join() == request)
        return listener
    }

    @Test func sameCodeOverUnixAndTCP() throws {
        try withTemporaryDirectory { directory in
            let unix = try exchange(over: Endpoint(directory.path("app.sock")))
            #expect(try unix.localEndpoint() == Endpoint(directory.path("app.sock")))
            try unix.close()
            #expect(!fileExists(atPath: directory.path("app.sock")))
        }
        let tcp = try exchange(over: Endpoint("tcp:127.0.0.1:0"))
        try tcp.close()
        let abstract = try exchange(over: .unix(uniqueAbstractAddress("endpoint")))
        try abstract.close()
    }

    @Test func tcpListenerReportsItsPortAndBothSidesTheirAddresses() throws {
        let listener = try StreamListener.bind(to: Endpoint("tcp:0"))
        defer { try? listener.close() }
        let bound = try listener.localEndpoint()
        guard case .tcp(let host, let port) = bound.kind else {
            Issue.record("not a TCP endpoint: \(bound)")
            return
        }
        #expect(host == "127.0.0.1", "tcp:PORT listens on the loopback address")
        #expect(port != 0)
        #expect(bound.description == "tcp:127.0.0.1:\(port)")

        let client = try StreamSocket.connect(to: bound)
        defer { try? client.close() }
        let (server, peer) = try listener.accept()
        defer { try? server.close() }
        #expect(client.isTCP && server.isTCP)
        #expect(try client.peerEndpoint() == bound)
        #expect(try client.localEndpoint() == peer)
        #expect(try server.localEndpoint() == bound)
        #expect(try server.peerEndpoint() == peer)
        #expect(listener.endpoint == Endpoint.tcp(host: "127.0.0.1", port: 0), "the endpoint as given")
    }

    @Test func tcpNoDelayIsOnByDefaultOnBothSides() throws {
        let listener = try StreamListener.bind(to: Endpoint("tcp:127.0.0.1:0"))
        defer { try? listener.close() }
        let client = try StreamSocket.connect(to: try listener.localEndpoint())
        defer { try? client.close() }
        let (server, _) = try listener.accept()
        defer { try? server.close() }
        for connection in [client, server] {
            #expect(try connection.noDelay())
            // What the kernel says, not only what the library remembers.
            var value: CInt = 0
            var length = socklen_t(MemoryLayout<CInt>.size)
            #expect(getsockopt(connection.descriptor.rawValue, CInt(IPPROTO_TCP), TCP_NODELAY, &value, &length) == 0)
            #expect(value != 0)
        }
        try client.setNoDelay(false)
        #expect(try client.noDelay() == false)
    }

    @Test func ipv6Loopback() throws {
        let listener = try StreamListener.bind(to: Endpoint("tcp:[::1]:0"))
        defer { try? listener.close() }
        let bound = try listener.localEndpoint()
        #expect(bound.description.hasPrefix("tcp:[::1]:"), "\(bound)")
        let client = try StreamSocket.connect(to: bound)
        defer { try? client.close() }
        let (server, peer) = try listener.accept()
        defer { try? server.close() }
        #expect(peer.description.hasPrefix("tcp:[::1]:"), "\(peer)")
        try client.writeAll(Array("six".utf8))
        #expect(try server.readExactly(3) == Array("six".utf8))
    }

    @Test("a host name tries each address: localhost reaches a 127.0.0.1 listener even if ::1 comes first")
    func hostNameTriesEachAddress() throws {
        let listener = try StreamListener.bind(to: Endpoint("tcp:127.0.0.1:0"))
        defer { try? listener.close() }
        guard case .tcp(_, let port) = try listener.localEndpoint().kind else { return }
        let client = try StreamSocket.connect(to: .tcp(host: "localhost", port: port), timeout: .seconds(5))
        defer { try? client.close() }
        let (server, _) = try listener.accept()
        defer { try? server.close() }
        try server.writeAll(Array("hi".utf8))
        #expect(try client.readExactly(2) == Array("hi".utf8))
    }

    @Test("a refused TCP connection names the endpoint and the cause")
    func refusedNamesTheEndpoint() throws {
        // A port that was free a moment ago: bind port 0, note it, close.
        let probe = try StreamListener.bind(to: Endpoint("tcp:127.0.0.1:0"))
        let endpoint = try probe.localEndpoint()
        try probe.close()
        let error = socketError { try StreamSocket.connect(to: endpoint) }
        #expect(error?.errno == .connectionRefused)
        #expect(error?.description == "connect(\(endpoint)): connection refused (nothing is listening there)")
    }

    @Test func unixConnectErrorsNameThePath() throws {
        try withTemporaryDirectory { directory in
            let error = socketError { try StreamSocket.connect(to: Endpoint(directory.path("none.sock"))) }
            #expect(error?.description == "connect(\(directory.path("none.sock"))): no such file or directory (no socket at this path)")
        }
    }

    @Test("a connect timeout ends the wait on a listener whose backlog is full")
    func connectTimeout() throws {
        try withTemporaryDirectory { directory in
            let endpoint = try Endpoint(directory.path("full.sock"))
            let listener = try StreamListener.bind(to: endpoint, options: BindOptions(backlog: 0))
            defer { try? listener.close() }
            var held: [StreamSocket] = []
            defer { held.forEach { try? $0.close() } }
            var timedOut: SocketError?
            for _ in 0..<16 {
                do {
                    held.append(try StreamSocket.connect(to: endpoint, timeout: .milliseconds(200)))
                } catch {
                    timedOut = error as? SocketError
                    break
                }
            }
            #expect(timedOut?.code == .timedOut, "\(String(describing: timedOut))")
            #expect(timedOut?.operation == "connect")
        }
    }

    @Test func unixListenerKeepsSafeBindAndRemovesItsFile() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("svc.sock")
            try makeStaleSocketFile(atPath: path)
            let listener = try StreamListener.bind(to: Endpoint(path))
            #expect(listener.replacedStaleSocket)
            let second = socketError { try StreamListener.bind(to: Endpoint(path)) }
            #expect(second?.code == .addressInUse)
            try listener.close()
            #expect(!fileExists(atPath: path))

            try writeFile(directory.path("plain"), contents: "keep")
            #expect(socketError { try StreamListener.bind(to: Endpoint(directory.path("plain"))) }?.code == .notASocket(.regular))
            #expect(try readFile(directory.path("plain")) == "keep")
        }
    }

    @Test func peerCredentialsOverUnixButNotTCP() throws {
        try withTemporaryDirectory { directory in
            let listener = try StreamListener.bind(to: Endpoint(directory.path("c.sock")))
            defer { try? listener.close() }
            let client = try StreamSocket.connect(to: listener.endpoint)
            defer { try? client.close() }
            #expect(try client.peerCredentials().processID == getpid())
        }
        let listener = try StreamListener.bind(to: Endpoint("tcp:0"))
        defer { try? listener.close() }
        let client = try StreamSocket.connect(to: try listener.localEndpoint())
        defer { try? client.close() }
        guard case .unsupported? = socketError({ try client.peerCredentials() })?.code else {
            Issue.record("TCP peer credentials should be refused")
            return
        }
    }

    @Test func tcpListenerRefusesAnAccessPolicy() {
        let error = socketError { try StreamListener.bind(to: Endpoint("tcp:0"), admitting: .users([0])) }
        guard case .invalidArgument? = error?.code else {
            Issue.record("expected .invalidArgument, got \(String(describing: error))")
            return
        }
    }

    @Test func closeWakesABlockedTCPRead() throws {
        let listener = try StreamListener.bind(to: Endpoint("tcp:0"))
        defer { try? listener.close() }
        let client = try StreamSocket.connect(to: try listener.localEndpoint())
        let (server, _) = try listener.accept()
        defer { try? server.close() }
        let reader = BackgroundThread { () throws -> Int in try client.read(upTo: 10).count }
        pause(.milliseconds(100))
        try client.close()
        #expect(throws: SocketError.self) { try reader.join(timeout: .seconds(10)) }
    }
}

@Suite("SocketFileStatus and FileStatus")
struct ProbeTests {
    @Test func probesEachState() throws {
        try withTemporaryDirectory { directory in
            let live = try StreamListener.bind(to: directory.address("live.sock"))
            defer { try? live.close() }
            #expect(try SocketFileStatus.probe(directory.address("live.sock")) == .listening(type: nil, credentials: nil))
            let identified = try SocketFileStatus.probe(directory.address("live.sock"), identifying: true)
            guard case .listening(.stream?, let credentials?) = identified else {
                Issue.record("expected a stream listener with credentials, got \(identified)")
                return
            }
            #expect(credentials.processID == getpid())
            #expect(credentials.userID == getuid())

            let datagram = try DatagramSocket.bind(to: directory.address("d.sock"))
            defer { try? datagram.close() }
            #expect(try SocketFileStatus.probe(directory.address("d.sock")) == .listening(type: .datagram, credentials: nil))

            let seqpacket = try SeqpacketListener.bind(to: directory.address("q.sock"))
            defer { try? seqpacket.close() }
            guard case .listening(.seqpacket?, _) = try SocketFileStatus.probe(directory.address("q.sock"), identifying: true) else {
                Issue.record("expected a seqpacket listener")
                return
            }

            try makeStaleSocketFile(atPath: directory.path("stale.sock"))
            #expect(try SocketFileStatus.probe(directory.address("stale.sock"), identifying: true) == .stale)
            try writeFile(directory.path("plain"), contents: "")
            #expect(try SocketFileStatus.probe(directory.address("plain")) == .notASocket(.regular))
            #expect(mkfifo(directory.path("fifo"), 0o600) == 0)
            #expect(try SocketFileStatus.probe(directory.address("fifo")) == .notASocket(.fifo))
            #expect(try SocketFileStatus.probe(directory.address("missing")) == .absent)
            #expect(try SocketFileStatus.probe(directory.address("plain/below")) == .absent)
            #expect(try SocketFileStatus.probe(uniqueAbstractAddress("none")) == .absent)
        }
    }

    @Test func abstractListenerIsListening() throws {
        let address = try uniqueAbstractAddress("probe")
        let listener = try StreamListener.bind(to: address)
        defer { try? listener.close() }
        guard case .listening(.stream?, let credentials) = try SocketFileStatus.probe(address, identifying: true) else {
            Issue.record("expected a stream listener")
            return
        }
        #expect(credentials?.processID == getpid())
    }

    @Test func fileStatusModeStrings() throws {
        try withTemporaryDirectory { directory in
            let listener = try StreamListener.bind(
                to: directory.address("s.sock"), options: BindOptions(permissions: [.ownerReadWrite, .groupRead]))
            defer { try? listener.close() }
            let socket = try FileStatus(path: directory.path("s.sock"))
            #expect(socket.type == .socket)
            #expect(socket.modeString == "srw-r-----")
            #expect(socket.octalMode == "0640")
            #expect(socket.userID == getuid())

            try writeFile(directory.path("f"), contents: "12345")
            #expect(chmod(directory.path("f"), 0o4755) == 0)
            let file = try FileStatus(path: directory.path("f"))
            #expect(file.modeString == "-rwsr-xr-x")
            #expect(file.size == 5)
            #expect(file.inode == fileIdentity(atPath: directory.path("f"))?.inode)

            #expect(mkdir(directory.path("d"), 0o1777) == 0)
            #expect(chmod(directory.path("d"), 0o1777) == 0)
            #expect(try FileStatus(path: directory.path("d")).modeString == "drwxrwxrwt")
            #expect(symlink("f", directory.path("l")) == 0)
            #expect(try FileStatus(path: directory.path("l")).type == .symbolicLink, "lstat: the link itself")

            let missing = socketError { try FileStatus(path: directory.path("missing")) }
            #expect(missing?.description == "stat(\(directory.path("missing"))): no such file or directory")
        }
    }
}

@Suite("Unix socket table (Linux)")
struct SocketTableTests {
    @Test func findsListenersWithTheirFileAndProcess() throws {
        try withTemporaryDirectory { directory in
            let listener = try StreamListener.bind(to: directory.address("t.sock"))
            defer { try? listener.close() }
            let abstract = try uniqueAbstractAddress("table")
            let abstractListener = try DatagramSocket.bind(to: abstract)
            defer { try? abstractListener.close() }

            let entries = try UnixSocketTable.entries()
            let status = try FileStatus(path: directory.path("t.sock"))
            let bound = entries.filter { $0.isBound(to: status) }
            #expect(bound.count == 1, "\(bound)")
            #expect(bound.first?.state == .listening)
            #expect(bound.first?.type == .stream)
            #expect(bound.first?.address.path == directory.path("t.sock"))
            #expect(bound.first?.processes.contains { $0.processID == getpid() } == true)

            let named = entries.filter { $0.address == abstract }
            #expect(named.count == 1, "\(named)")
            #expect(named.first?.type == .datagram)
            #expect(named.first?.state == .unconnected)
            #expect(named.first?.processes.contains { $0.processID == getpid() } == true)
        }
    }

    @Test("without socket diagnostics, /proc/net/unix gives the same listeners")
    func procNetUnixFallback() throws {
        try withTemporaryDirectory { directory in
            let listener = try StreamListener.bind(to: directory.address("p.sock"))
            defer { try? listener.close() }
            let abstract = try uniqueAbstractAddress("proc")
            let abstractListener = try SeqpacketListener.bind(to: abstract)
            defer { try? abstractListener.close() }

            let entries = try SocketTableReader.read(withProcesses: true, procOnly: true)
            let status = try FileStatus(path: directory.path("p.sock"))
            let bound = entries.filter { $0.isBound(to: status) && $0.state == .listening }
            #expect(bound.count == 1, "\(bound)")
            #expect(bound.first?.type == .stream)
            #expect(bound.first?.processes.contains { $0.processID == getpid() } == true)

            let named = entries.filter { $0.address == abstract }
            #expect(named.first?.type == .seqpacket)
            #expect(named.first?.state == .listening)
        }
    }
}
