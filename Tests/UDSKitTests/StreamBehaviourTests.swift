import Foundation
import SystemPackage
import Testing
import UDSKit

#if canImport(Glibc)
import Glibc
#endif

/// Where a listener is bound: the same behaviour is expected at each.
enum Place: String, CaseIterable, Sendable {
    case path, abstract, tcp

    func endpoint(in directory: TemporaryDirectory) throws -> Endpoint {
        switch self {
        case .path: .unix(try directory.address("stream.sock"))
        case .abstract: .unix(try uniqueAbstractAddress("stream"))
        case .tcp: try Endpoint("tcp:127.0.0.1:0")
        }
    }
}

/// The API level under test.
enum Level: String, CaseIterable, Sendable {
    case blocking, async
}

/// One end of a byte stream at either level, so that one test body runs over both.
struct StreamEnd: Sendable {
    let level: Level
    let blocking: StreamSocket?
    let async: AsyncStreamSocket?

    init(_ socket: StreamSocket) { (level, blocking, async) = (.blocking, socket, nil) }
    init(_ socket: AsyncStreamSocket) { (level, blocking, async) = (.async, nil, socket) }

    var socket: any ByteStreamSocket { blocking ?? async! }

    func writeAll(_ bytes: [UInt8]) async throws {
        if let blocking { try blocking.writeAll(bytes) } else { try await async!.writeAll(bytes) }
    }

    func read(upTo count: Int, timeout: Duration? = nil) async throws -> [UInt8] {
        if let blocking { return try blocking.read(upTo: count, timeout: timeout) }
        return try await async!.read(upTo: count, timeout: timeout)
    }

    func readExactly(_ count: Int, timeout: Duration? = .seconds(30)) async throws -> [UInt8] {
        if let blocking { return try blocking.readExactly(count, timeout: timeout) }
        return try await async!.readExactly(count, timeout: timeout)
    }

    func writeAll(_ bytes: [UInt8], descriptors: [FileDescriptor]) async throws {
        if let blocking { try blocking.writeAll(bytes, descriptors: descriptors) } else {
            try await async!.writeAll(bytes, descriptors: descriptors)
        }
    }

    /// Starts a read that waits; the closure returns its outcome.
    func readInBackground() -> @Sendable () async throws -> [UInt8] {
        if let blocking {
            let thread = BackgroundThread { try blocking.read(upTo: 16) }
            return { try thread.join(timeout: endsRatherThanHangs) }
        }
        let socket = async!
        let task = Task { try await socket.read(upTo: 16) }
        return { try await task.value }
    }
}

/// A listener at either level.
struct ListenerEnd: Sendable {
    let blocking: StreamListener?
    let async: AsyncStreamListener?

    init(_ level: Level, on endpoint: Endpoint) throws {
        switch level {
        case .blocking: (blocking, async) = (try StreamListener.bind(to: endpoint), nil)
        case .async: (blocking, async) = (nil, try AsyncStreamListener.bind(to: endpoint))
        }
    }

    init(adopting descriptor: FileDescriptor, at level: Level) throws {
        switch level {
        case .blocking: (blocking, async) = (try StreamListener(adopting: descriptor), nil)
        case .async: (blocking, async) = (nil, try AsyncStreamListener(adopting: descriptor))
        }
    }

    var listener: Listener { blocking ?? async! }

    func accept() async throws -> (StreamEnd, Endpoint) {
        if let blocking {
            let (connection, peer) = try blocking.accept(timeout: .seconds(30))
            return (StreamEnd(connection), peer)
        }
        let (connection, peer) = try await async!.accept(timeout: .seconds(30))
        return (StreamEnd(connection), peer)
    }

    /// Connects a client of the same level to this listener.
    func connect() async throws -> StreamEnd {
        let endpoint = try listener.localEndpoint()
        if blocking != nil { return StreamEnd(try StreamSocket.connect(to: endpoint, timeout: .seconds(10))) }
        return StreamEnd(try await AsyncStreamSocket.connect(to: endpoint, timeout: .seconds(10)))
    }
}

@Suite("One stream API over a path, an abstract name and TCP, blocking and async")
struct StreamBehaviourTests {
    static let cases = Place.allCases.flatMap { place in Level.allCases.map { (place, $0) } }

    /// A connected client and server over `place` at `level`.
    private func connected(
        _ place: Place, _ level: Level, in directory: TemporaryDirectory
    ) async throws -> (listener: ListenerEnd, client: StreamEnd, server: StreamEnd) {
        let listener = try ListenerEnd(level, on: place.endpoint(in: directory))
        let client = try await listener.connect()
        let (server, peer) = try await listener.accept()
        #expect(peer.isTCP == (place == .tcp))
        return (listener, client, server)
    }

    @Test(arguments: cases)
    func exchangeAndHalfClose(_ place: Place, _ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, client, server) = try await connected(place, level, in: directory)
            defer { try? listener.listener.close() }
            try await client.writeAll(Array("hello".utf8))
            #expect(try await server.readExactly(5) == Array("hello".utf8))
            try await server.writeAll(Array("olleh".utf8))
            try client.socket.shutdown(.write)
            #expect(try await server.read(upTo: 16, timeout: .seconds(30)).isEmpty, "the half-close reads as the end")
            try server.socket.shutdown(.write)
            #expect(try await client.readExactly(5) == Array("olleh".utf8), "the other direction still works")
            #expect(try await client.read(upTo: 16, timeout: .seconds(30)).isEmpty)
            #expect(client.socket.isTCP == (place == .tcp))
            try client.socket.close()
            try server.socket.close()
        }
    }

    @Test(arguments: cases)
    func readExactlyReportsAnEarlyEnd(_ place: Place, _ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, client, server) = try await connected(place, level, in: directory)
            defer { try? listener.listener.close() }
            try await server.writeAll([1, 2, 3])
            try server.socket.close()
            do {
                _ = try await client.readExactly(5)
                Issue.record("read 5 bytes of 3")
            } catch let error as SocketError {
                #expect(error.code == .unexpectedEndOfStream(received: 3, expected: 5))
            }
            try client.socket.close()
        }
    }

    @Test(arguments: cases)
    func readsTimeOutByArgumentAndByDefault(_ place: Place, _ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, client, server) = try await connected(place, level, in: directory)
            defer { try? listener.listener.close() }
            func expectTimedOut(_ body: () async throws -> [UInt8]) async {
                do {
                    let bytes = try await body()
                    Issue.record("expected a timeout, read \(bytes)")
                } catch let error as SocketError {
                    #expect(error.code == .timedOut, "\(error)")
                } catch {
                    Issue.record("unexpected \(error)")
                }
            }
            await expectTimedOut { try await client.read(upTo: 16, timeout: .milliseconds(50)) }
            try client.socket.setReadTimeout(.milliseconds(50))
            await expectTimedOut { try await client.read(upTo: 16) }
            // An operation's own timeout wins over the default.
            try await server.writeAll([9])
            #expect(try await client.read(upTo: 16, timeout: .seconds(30)) == [9])
            try client.socket.setReadTimeout(nil)
            #expect(socketError { try client.socket.setReadTimeout(.zero) }?.code == .invalidArgument("a timeout must be positive"))
            try client.socket.close()
            try server.socket.close()
        }
    }

    @Test(arguments: cases)
    func closeWakesAWaitingRead(_ place: Place, _ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, client, server) = try await connected(place, level, in: directory)
            defer { try? listener.listener.close() }
            let outcome = client.readInBackground()
            try await Task.sleep(for: .milliseconds(100))
            try client.socket.close()
            do {
                let bytes = try await outcome()
                Issue.record("the read returned \(bytes) after close")
            } catch let error as SocketError {
                #expect(error.code == .closed, "\(error)")
            }
            try server.socket.close()
        }
    }

    @Test("release hands the descriptor over: plain read and write work on it, the socket is done", arguments: cases)
    func releaseHandsTheDescriptorOver(_ place: Place, _ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, client, server) = try await connected(place, level, in: directory)
            defer { try? listener.listener.close() }
            let descriptor = try client.socket.release()
            defer { try? descriptor.close() }
            #expect(socketError { try client.socket.release() }?.code == .closed)
            #expect(socketError { _ = try client.socket.peerEndpoint() }?.code == .closed)
            try client.socket.close()  // does nothing: the descriptor is no longer the socket's

            let written = try Array("plain".utf8).withUnsafeBytes { try descriptor.write($0) }
            #expect(written == 5)
            #expect(try await server.readExactly(5) == Array("plain".utf8))
            try await server.writeAll(Array("back".utf8))
            // An async socket's descriptor stays non-blocking: wait for the bytes first.
            var ready = pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)
            #expect(poll(&ready, 1, 30_000) == 1)
            var buffer = [UInt8](repeating: 0, count: 16)
            let count = try buffer.withUnsafeMutableBytes { try descriptor.read(into: $0) }
            #expect(Array(buffer[..<count]) == Array("back".utf8))
            try server.socket.close()
        }
    }

    @Test("release is refused while another thread is inside a call on the descriptor")
    func releaseWhileInUse() throws {
        let (socket, peer) = try StreamSocket.makePair()
        let entered = DispatchSemaphore(value: 0)
        let proceed = DispatchSemaphore(value: 0)
        let inside = BackgroundThread {
            try socket.withDescriptor("test") { (_) throws(SocketError) in
                entered.signal()
                proceed.wait()
            }
        }
        entered.wait()
        let refusal = socketErrorIfAny { () throws(SocketError) in _ = try socket.release() }
        #expect(refusal?.code == .invalidArgument("another call is still using the socket"), "\(String(describing: refusal))")
        proceed.signal()
        try inside.join(timeout: endsRatherThanHangs)
        let descriptor = try socket.release()  // nobody inside now
        #expect(socketErrorIfAny { () throws(SocketError) in try socket.shutdown(.both) }?.code == .closed)
        try descriptor.close()
        try peer.close()
    }

    @Test("a released listener keeps its socket file; the new owner serves on it", arguments: Level.allCases)
    func releasedListenerKeepsItsFile(_ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let endpoint = try Place.path.endpoint(in: directory)
            var listener: ListenerEnd? = try ListenerEnd(level, on: endpoint)
            let descriptor = try listener!.listener.release()
            listener = nil
            #expect(fileExists(atPath: directory.path("stream.sock")), "release leaves the file to the new owner")
            let adopted = try StreamListener(adopting: descriptor)
            let client = try StreamSocket.connect(to: endpoint, timeout: .seconds(10))
            let (connection, _) = try adopted.accept(timeout: .seconds(30))
            try client.writeAll([7])
            #expect(try connection.readExactly(1, timeout: .seconds(30)) == [7])
            try adopted.close()
            #expect(fileExists(atPath: directory.path("stream.sock")), "an adopted listener never removes a file it did not create")
        }
    }

    @Test("credentials, descriptors and Unix names: on TCP a typed .unsupported", arguments: cases)
    func unixOnlyFeatures(_ place: Place, _ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let (listener, client, server) = try await connected(place, level, in: directory)
            defer { try? listener.listener.close() }
            let unsupportedOnTCP = { (error: SocketError?) in
                if place == .tcp {
                    guard case .unsupported? = error?.code else {
                        Issue.record("expected .unsupported on TCP, got \(String(describing: error))")
                        return
                    }
                } else {
                    #expect(error == nil)
                }
            }
            unsupportedOnTCP(socketErrorIfAny { () throws(SocketError) in _ = try server.socket.peerCredentials() })
            unsupportedOnTCP(socketErrorIfAny { () throws(SocketError) in _ = try client.socket.localAddress() })
            unsupportedOnTCP(socketErrorIfAny { () throws(SocketError) in try server.socket.setReceivesCredentials(false) })
            if place != .tcp { #expect(try server.socket.peerCredentials().processID == getpid()) }
            #expect(try client.socket.peerEndpoint() == listener.listener.localEndpoint())
            #expect(try server.socket.localEndpoint() == listener.listener.localEndpoint())
            let pipe = try makePipe()
            defer { close(pipe.read); close(pipe.write) }
            do {
                try await client.writeAll([1], descriptors: [FileDescriptor(rawValue: pipe.write)])
                #expect(place != .tcp, "descriptors went over TCP")
            } catch let error as SocketError {
                unsupportedOnTCP(error)
            }
            try client.socket.close()
            try server.socket.close()
        }
    }

    @Test("every listener's connections sequence accepts until it is closed", arguments: Level.allCases)
    func connectionsSequence(_ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let listener = try ListenerEnd(level, on: try Place.path.endpoint(in: directory))
            let clients = try await (0..<3).asyncMap { _ in try await listener.connect() }
            var accepted = 0
            if let blocking = listener.blocking {
                for result in blocking.connections {
                    let (connection, _) = try result.get()
                    try connection.close()
                    accepted += 1
                    if accepted == 3 { break }
                }
                try blocking.close()
                var afterClose = blocking.connections.makeIterator()
                #expect(afterClose.next() == nil, "the sequence ends once the listener is closed")
            } else if let async = listener.async {
                for try await (connection, _) in async.connections {
                    try connection.close()
                    accepted += 1
                    if accepted == 3 { break }
                }
                try async.close()
                var afterClose = async.connections.makeAsyncIterator()
                #expect(try await afterClose.next() == nil)
            }
            #expect(accepted == 3)
            for client in clients { try client.socket.close() }
        }
    }

    @Test("a listening socket received over SCM_RIGHTS is adopted and served on", arguments: cases)
    func adoptAListenerReceivedOverSCMRights(_ place: Place, _ level: Level) async throws {
        try await withTemporaryDirectoryAsync { directory in
            let original = try StreamListener.bind(to: place.endpoint(in: directory))
            let bound = try original.localEndpoint()
            let (sender, receiver) = try StreamSocket.makePair()
            try sender.writeAll([1], descriptors: [original.descriptor])
            var buffer = [UInt8](repeating: 0, count: 4)
            let (_, received) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0, timeout: .seconds(30)) }
            let descriptor = try #require(received.first?.take())
            // Our copy goes; the kernel's socket lives on in the received descriptor.
            original.keepSocketFileOnClose()
            try original.close()

            let adopted = try ListenerEnd(adopting: descriptor, at: level)
            defer { try? adopted.listener.close() }
            #expect(try adopted.listener.localEndpoint() == bound)
            #expect(adopted.listener.endpoint == bound, "an adopted listener reports what the kernel says")
            let client = try await adopted.connect()
            let (server, _) = try await adopted.accept()
            try await client.writeAll(Array("adopted".utf8))
            #expect(try await server.readExactly(7) == Array("adopted".utf8))
            try client.socket.close()
            try server.socket.close()
        }
    }

    @Test("SCM_CREDENTIALS on stream and seqpacket too: what arrives carries the sender's credentials")
    func credentialsRideOnStreamsAndSeqpackets() async throws {
        var buffer = [UInt8](repeating: 0, count: 8)
        let (streamSender, streamReceiver) = try StreamSocket.makePair()
        try streamReceiver.setReceivesCredentials(true)
        try streamSender.writeAll([1, 2, 3])
        let (message, _) = try buffer.withUnsafeMutableBytes {
            try streamReceiver.receiveWithDescriptors(into: $0, timeout: .seconds(30))
        }
        #expect(message.count == 3)
        #expect(message.credentials?.processID == getpid())
        #expect(message.credentials?.userID == getuid())

        let (seqpacketSender, seqpacketReceiver) = try AsyncSeqpacketSocket.makePair()
        try seqpacketReceiver.setReceivesCredentials(true)
        try await seqpacketSender.send([4])
        let (bytes, receipt) = try await seqpacketReceiver.receive(maximumSize: 8, timeout: .seconds(30))
        #expect(bytes == [4])
        #expect(receipt.credentials?.processID == getpid())
        #expect(receipt.credentials?.groupID == getgid())
        for socket: Socket in [streamSender, streamReceiver, seqpacketSender, seqpacketReceiver] { try socket.close() }
    }

    @Test func streamOnlyKindsRefuseTCPAndLocalBinds() async throws {
        let tcp = try Endpoint("tcp:127.0.0.1:1")
        for error in [
            socketError { _ = try SeqpacketListener.bind(to: tcp) },
            socketError { _ = try SeqpacketSocket.connect(to: tcp) },
            socketError { _ = try DatagramSocket.bind(to: tcp) },
            socketError { _ = try StreamSocket.connect(to: tcp, from: try uniqueAbstractAddress("local")) },
        ] {
            guard case .unsupported? = error?.code else {
                Issue.record("expected .unsupported, got \(String(describing: error))")
                continue
            }
        }
    }

    @Test("a FilePath is accepted where a path is")
    func filePathIsAnEndpoint() throws {
        try withTemporaryDirectory { directory in
            let path = FilePath(directory.path("file-path.sock"))
            let listener = try StreamListener.bind(to: path)
            defer { try? listener.close() }
            #expect(listener.address == (try directory.address("file-path.sock")))
            let client = try StreamSocket.connect(to: path, timeout: .seconds(10))
            try client.close()
        }
    }
}

/// The error `body` throws, or `nil`: for a call that may or may not fail yet.
func socketErrorIfAny(_ body: () throws(SocketError) -> Void) -> SocketError? {
    do throws(SocketError) {
        try body()
        return nil
    } catch {
        return error
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async throws -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
