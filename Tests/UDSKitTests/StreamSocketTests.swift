import SystemPackage
import Foundation
import Glibc
import Testing
import UDSKit

@Suite("StreamSocket")
struct StreamSocketTests {
    /// Reads until the end of the stream.
    private func readToEnd(_ socket: StreamSocket) throws -> [UInt8] {
        var result: [UInt8] = []
        while true {
            let chunk = try socket.read(upTo: 4096)
            if chunk.isEmpty { return result }
            result += chunk
        }
    }

    // MARK: Connecting and addresses

    @Test func connectAcceptAndAddresses() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("server.sock")
            let listener = try StreamListener.bind(to: address)
            #expect(try listener.localAddress() == address)

            let client = try StreamSocket.connect(to: address)
            let (server, peer) = try listener.accept()
            #expect(peer == .unix(.unnamed))
            #expect(try client.localAddress() == .unnamed)
            #expect(try client.peerAddress() == address)
            #expect(try server.localAddress() == address)
            #expect(try server.peerAddress() == .unnamed)

            try client.writeAll(Array("hello".utf8))
            #expect(try server.readExactly(5) == Array("hello".utf8))
            try server.writeAll(Array("world!".utf8))
            #expect(try client.readExactly(6) == Array("world!".utf8))
        }
    }

    @Test func clientBoundToAPathIsSeenAsThePeer() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("server.sock")
            let clientPath = directory.path("client-\(getpid()).sock")
            let clientAddress = try UnixAddress(path: clientPath)
            let listener = try StreamListener.bind(to: address)

            let client = try StreamSocket.connect(to: address, from: clientAddress)
            #expect(fileIdentity(atPath: clientPath)?.isSocket == true)
            let (server, peer) = try listener.accept()
            #expect(peer == .unix(clientAddress))
            #expect(peer.unixAddress?.path == clientPath)
            #expect(try server.peerAddress() == clientAddress)
            #expect(try client.localAddress() == clientAddress)

            try client.close()
            #expect(!fileExists(atPath: clientPath))
            // The server sees the end of the stream.
            #expect(try server.read(upTo: 10).isEmpty)
        }
    }

    @Test func clientBoundToAnAbstractName() throws {
        let serverAddress = try uniqueAbstractAddress("server")
        let clientAddress = try uniqueAbstractAddress("client")
        let listener = try StreamListener.bind(to: serverAddress)
        let client = try StreamSocket.connect(to: serverAddress, from: clientAddress)
        let (server, peer) = try listener.accept()
        #expect(peer == .unix(clientAddress))
        #expect(try server.peerAddress() == clientAddress)
        #expect(try server.localAddress() == serverAddress)
        try server.writeAll([1, 2, 3])
        #expect(try client.readExactly(3) == [1, 2, 3])
    }

    @Test func failedConnectLeavesNoClientFile() throws {
        try withTemporaryDirectory { directory in
            let clientPath = directory.path("client.sock")
            let error = try #require(socketError {
                try StreamSocket.connect(to: UnixAddress(path: directory.path("absent.sock")), from: UnixAddress(path: clientPath))
            })
            #expect(error.errno == .noSuchFileOrDirectory)
            #expect(!fileExists(atPath: clientPath))
        }
    }

    @Test func connectToAMissingPath() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("missing.sock")
            let error = try #require(socketError { try StreamSocket.connect(to: UnixAddress(path: path)) })
            #expect(error.errno == .noSuchFileOrDirectory)
            #expect(error.code == .system(.noSuchFileOrDirectory))
            #expect(error.operation == "connect")
            #expect(error.address == path)
            #expect(error.description.hasPrefix("connect(\(path)):"))
            #expect(error.description.contains("no such file or directory"))
            #expect(error.description.contains("no socket at this path"))
        }
    }

    @Test func connectToAStaleSocketIsRefused() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("stale.sock")
            try makeStaleSocketFile(atPath: path)
            let error = try #require(socketError { try StreamSocket.connect(to: UnixAddress(path: path)) })
            #expect(error.code == .system(.connectionRefused))
            #expect(error.errno == .connectionRefused)
            #expect(error.description.hasPrefix("connect(\(path)): "))
            #expect(error.description.contains("nothing is listening there"))
            // Connecting does not remove the stale file; only binding replaces it.
            #expect(fileIdentity(atPath: path)?.isSocket == true)
        }
    }

    @Test func connectToAnUnusedAbstractNameIsRefused() throws {
        let address = try uniqueAbstractAddress("nobody")
        let error = try #require(socketError { try StreamSocket.connect(to: address) })
        #expect(error.errno == .connectionRefused)
        #expect(error.description.hasPrefix("connect(\(address)): "))
    }

    @Test func connectToADatagramSocketIsAProtocolMismatch() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("dgram.sock")
            let datagram = try DatagramSocket.bind(to: address)
            let error = try #require(socketError { try StreamSocket.connect(to: address) })
            #expect(error.errno == .protocolWrongTypeForSocket)
            withExtendedLifetime(datagram) {}
        }
        // Linux keeps one abstract namespace per socket type: a stream connect
        // does not find a datagram socket's abstract name at all.
        let abstract = try uniqueAbstractAddress("dgram")
        let datagram = try DatagramSocket.bind(to: abstract)
        #expect(socketError { try StreamSocket.connect(to: abstract) }?.errno == .connectionRefused)
        withExtendedLifetime(datagram) {}
    }

    // MARK: Half-close

    @Test func halfCloseLetsTheServerAnswerAfterTheEndOfTheRequest() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("half.sock")
            let listener = try StreamListener.bind(to: address)
            let client = try StreamSocket.connect(to: address)
            let (server, _) = try listener.accept()

            let request = Array("a request of unknown length".utf8)
            try client.writeAll(request)
            try client.shutdown(.write)
            // Writing after shutting down the write side fails.
            #expect(socketError { try client.writeAll([1]) }?.errno == .brokenPipe)

            let received = try readToEnd(server)
            #expect(received == request)
            let reply = Array("received \(received.count) bytes".utf8)
            try server.writeAll(reply)
            try server.close()

            #expect(try readToEnd(client) == reply)
        }
    }

    @Test func halfCloseOnAPair() throws {
        let (a, b) = try StreamSocket.makePair()
        try a.writeAll([9, 8, 7])
        try a.shutdown(.write)
        #expect(try readToEnd(b) == [9, 8, 7])
        try b.writeAll([6])
        #expect(try a.readExactly(1) == [6])
    }

    // MARK: Bulk transfer

    /// Reads go through `recvmsg` while the socket keeps incoming descriptors
    /// (the default) and through `recv` otherwise: both paths carry 64 MiB.
    @Test(arguments: [true, false])
    func transfers64MiBByteForByte(keepsIncomingDescriptors: Bool) throws {
        let total = 64 << 20
        let expected = patternBytes(count: total, seed: 0x5EED_1234_ABCD_0001)
        let address = try uniqueAbstractAddress("bulk")
        let listener = try StreamListener.bind(to: address)
        let client = try StreamSocket.connect(to: address)
        let (server, _) = try listener.accept()
        server.keepsIncomingDescriptors = keepsIncomingDescriptors
        try server.setReadTimeout(.seconds(30))

        let writer = BackgroundThread { () throws -> Int in
            let chunkSizes = [1, 3, 4097, 65_537, 999_999, 17, 131_071, 7, 2_000_001]
            var offset = 0
            var chunks = 0
            try expected.withUnsafeBytes { bytes in
                while offset < total {
                    let count = min(chunkSizes[chunks % chunkSizes.count], total - offset)
                    try client.writeAll(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)]))
                    offset += count
                    chunks += 1
                }
            }
            try client.shutdown(.write)
            return chunks
        }

        let readSizes = [1, 7, 4096, 65_536, 1_000_003, 13, 262_144, 100_000, 3]
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: readSizes.max()!, alignment: 16)
        defer { scratch.deallocate() }
        var received = 0
        var reads = 0
        var firstMismatch: Int?
        var overflow = false
        try expected.withUnsafeBytes { bytes in
            while true {
                let size = readSizes[reads % readSizes.count]
                let count = try server.read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<size]))
                reads += 1
                if count == 0 { break }
                #expect(count <= size)
                guard received + count <= total else { overflow = true; break }
                if memcmp(scratch.baseAddress!, bytes.baseAddress! + received, count) != 0 {
                    let slice = scratch[0..<count]
                    let at = zip(slice, bytes[received..<(received + count)]).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? 0
                    firstMismatch = received + at
                    break
                }
                received += count
            }
        }
        if firstMismatch != nil || overflow { try server.close() }  // unblock the writer
        #expect(firstMismatch == nil, "first differing byte at offset \(firstMismatch ?? -1)")
        #expect(!overflow, "more bytes arrived than were sent")
        #expect(received == total)
        let chunks = try writer.join(timeout: .seconds(60))
        #expect(chunks > 100)
        #expect(reads > 100)
    }

    // MARK: Exact reads

    @Test func readExactlyCollectsPartialWrites() throws {
        let (a, b) = try StreamSocket.makePair()
        let writer = BackgroundThread {
            for byte: UInt8 in 1...10 {
                try a.writeAll([byte])
                pause(.milliseconds(2))
            }
        }
        #expect(try b.readExactly(10) == Array(1...10))
        try writer.join()

        try a.writeAll([1, 2, 3, 4])
        var buffer = [UInt8](repeating: 0, count: 4)
        try buffer.withUnsafeMutableBytes { raw in try b.readExactly(into: raw) }
        #expect(buffer == [1, 2, 3, 4])
    }

    @Test func readExactlyReportsAnEarlyEnd() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("early.sock")
            let listener = try StreamListener.bind(to: address)
            let client = try StreamSocket.connect(to: address)
            let (server, _) = try listener.accept()
            try client.writeAll([1, 2, 3, 4, 5])
            try client.close()

            let error = try #require(socketError { try server.readExactly(10) })
            #expect(error.code == .unexpectedEndOfStream(received: 5, expected: 10))
            #expect(error.operation == "read")
            #expect(error.description.contains("after 5 of 10 bytes"))
            #expect(error.description.hasPrefix("read(\(address)): "))
        }
    }

    @Test func readExactlyOfNothingAtTheEnd() throws {
        let (a, b) = try StreamSocket.makePair()
        try a.close()
        #expect(socketError { try b.readExactly(1) }?.code == .unexpectedEndOfStream(received: 0, expected: 1))
        #expect(try b.readExactly(0) == [])
    }

    // MARK: Timeouts

    @Test func readTimeoutExpires() throws {
        let (a, b) = try StreamSocket.makePair()
        try a.setReadTimeout(.milliseconds(100))
        let clock = ContinuousClock()
        let start = clock.now
        let error = try #require(socketError { try a.read(upTo: 16) })
        let elapsed = clock.now - start
        #expect(error.code == .timedOut)
        #expect(error.description.hasSuffix("timed out"))
        #expect(elapsed >= .milliseconds(80))
        #expect(elapsed < endsRatherThanHangs)

        // The socket still works afterwards, and the timeout can be lifted.
        try b.writeAll([7])
        #expect(try a.read(upTo: 16) == [7])
        try a.setReadTimeout(nil)
        try b.writeAll([8])
        #expect(try a.read(upTo: 16) == [8])
    }

    @Test func writeTimeoutExpiresWhenThePeerDoesNotRead() throws {
        let (a, b) = try StreamSocket.makePair()
        try a.setWriteTimeout(.milliseconds(50))
        let chunk = [UInt8](repeating: 0xAB, count: 1 << 20)
        var error: SocketError?
        for _ in 0..<1000 {
            error = failure { try a.writeAll(chunk) }
            if error != nil { break }
        }
        #expect(error?.code == .timedOut)
        withExtendedLifetime(b) {}
    }

    // MARK: A closed peer

    @Test func writingToAClosedPeerFails() throws {
        // This test never touches SIGPIPE, but the uds tests in this binary set
        // it to SIG_IGN; `writingToAClosedPeerRaisesNoSIGPIPE` proves in a child
        // process of its own, with SIGPIPE's default action, that none is raised.
        try withTemporaryDirectory { directory in
            let address = try directory.address("gone.sock")
            let listener = try StreamListener.bind(to: address)
            let client = try StreamSocket.connect(to: address)
            let (server, _) = try listener.accept()
            try server.close()

            let chunk = [UInt8](repeating: 1, count: 65_536)
            var error: SocketError?
            for _ in 0..<100 {
                error = failure { try client.writeAll(chunk) }
                if error != nil { break }
            }
            let failure = try #require(error)
            #expect(failure.errno == .brokenPipe || failure.errno == .connectionReset, "\(failure)")
            #expect(failure.operation == "write")

            // And on a pair, through the plain write call.
            let (a, b) = try StreamSocket.makePair()
            try b.close()
            let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 10, alignment: 1)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 2)
            let pairError = try #require(socketError { try a.write(UnsafeRawBufferPointer(raw)) })
            #expect(pairError.errno == .brokenPipe || pairError.errno == .connectionReset)
        }
    }

    /// Writes to closed peers, with SIGPIPE's default action (terminate the
    /// process) in force, in a child process: the child must exit normally.
    @Test func writingToAClosedPeerRaisesNoSIGPIPE() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let child = try await runTestInChildProcess(named: "closedPeerWritesInChildProcess", in: directory)
            #expect(child.reason == .exit, "the child was killed by signal \(child.status); output:\n\(child.output)")
            #expect(child.status == 0, "child output:\n\(child.output)")
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            #expect(result["sigpipe"] == "default")
            for key in ["write", "writeAll", "writeAllWithDescriptors", "seqpacketSend"] {
                #expect(["EPIPE", "ECONNRESET"].contains(result[key] ?? "none"), "\(key): \(result[key] ?? "none")")
            }
        }
    }

    @Test(.enabled(if: isChildProcess(for: "closedPeerWritesInChildProcess")))
    func closedPeerWritesInChildProcess() throws {
        // Only this test runs in this process, so changing a signal is safe here.
        signal(SIGPIPE, SIG_DFL)
        var current = sigaction()
        sigaction(SIGPIPE, nil, &current)
        let isDefault = unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_DFL, to: Int.self)

        func name(_ error: SocketError?) -> String {
            switch error?.errno {
            case .brokenPipe?: "EPIPE"
            case .connectionReset?: "ECONNRESET"
            case let other?: "\(other)"
            case nil: "\(error.map { "\($0)" } ?? "no error")"
            }
        }
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 1)
        let bytes = UnsafeRawBufferPointer(raw)

        let (a, b) = try StreamSocket.makePair()
        try b.close()
        let write = failure { _ = try a.write(bytes) }

        let address = try uniqueAbstractAddress("sigpipe")
        let listener = try StreamListener.bind(to: address)
        let client = try StreamSocket.connect(to: address)
        try listener.accept().connection.close()
        let writeAll = failure { try client.writeAll(bytes) }

        let (c, d) = try StreamSocket.makePair()
        try d.close()
        let withDescriptors = failure { try c.writeAll(bytes, descriptors: [FileDescriptor(rawValue: FileHandle.standardError.fileDescriptor)]) }

        let (e, f) = try SeqpacketSocket.makePair()
        try f.close()
        let seqpacketSend = failure { _ = try e.send(bytes) }

        // Still alive: no SIGPIPE was raised.
        try writeChildResult([
            "sigpipe": isDefault ? "default" : "changed",
            "write": name(write), "writeAll": name(writeAll),
            "writeAllWithDescriptors": name(withDescriptors), "seqpacketSend": name(seqpacketSend),
        ])
        #expect(isDefault)
        #expect(write != nil && writeAll != nil && withDescriptors != nil && seqpacketSend != nil)
    }

    @Test func readingFromAClosedPeerIsTheEnd() throws {
        let (a, b) = try StreamSocket.makePair()
        try b.writeAll([1, 2])
        try b.close()
        #expect(try a.read(upTo: 10) == [1, 2])
        #expect(try a.read(upTo: 10) == [])
        #expect(try a.read(upTo: 10) == [])
    }

    // MARK: Closing from another thread

    @Test(arguments: [true, false])
    func closeWakesABlockedRead(keepsIncomingDescriptors: Bool) throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("wake.sock")
            let listener = try StreamListener.bind(to: address)
            let client = try StreamSocket.connect(to: address)
            client.keepsIncomingDescriptors = keepsIncomingDescriptors
            let (server, _) = try listener.accept()
            let identity = try #require(fileIdentity(ofDescriptor: client.descriptor.rawValue))

            let reader = BackgroundThread { try client.read(upTo: 100) }
            pause(.milliseconds(200))  // let it block in recv
            try client.close()

            let error = #expect(throws: SocketError.self) { try reader.join(timeout: .seconds(10)) }
            #expect(error?.code == .closed)
            // The descriptor is closed once the woken read has returned.
            #expect(fileIdentity(ofDescriptor: client.descriptor.rawValue) != identity)
            #expect(socketError { try client.read(upTo: 1) }?.code == .closed)
            withExtendedLifetime(server) {}
        }
    }

    @Test func closeWakesABlockedReadOnAPair() throws {
        let (a, b) = try StreamSocket.makePair()
        let reader = BackgroundThread { () throws -> Int in
            var buffer = [UInt8](repeating: 0, count: 8)
            return try buffer.withUnsafeMutableBytes { raw in try a.read(into: raw) }
        }
        pause(.milliseconds(200))
        try a.close()
        let error = #expect(throws: SocketError.self) { try reader.join(timeout: .seconds(10)) }
        #expect(error?.code == .closed)
        // The peer sees the end of the stream.
        #expect(try b.read(upTo: 1) == [])
    }

    @Test func closeWakesABlockedWrite() throws {
        let (a, b) = try StreamSocket.makePair()
        let writer = BackgroundThread {
            let chunk = [UInt8](repeating: 3, count: 1 << 20)
            for _ in 0..<1000 { try a.writeAll(chunk) }  // the peer never reads: blocks
        }
        pause(.milliseconds(200))
        try a.close()
        let error = #expect(throws: SocketError.self) { try writer.join(timeout: .seconds(10)) }
        #expect(error?.code == .closed)
        withExtendedLifetime(b) {}
    }

    @Test func closeWakesABlockedAccept() throws {
        let address = try uniqueAbstractAddress("accept")
        let listener = try StreamListener.bind(to: address)
        let acceptor = BackgroundThread { try listener.accept().peer }
        pause(.milliseconds(200))
        try listener.close()
        let error = #expect(throws: SocketError.self) { try acceptor.join(timeout: .seconds(10)) }
        #expect(error?.code == .closed)
        // The name is released.
        #expect(socketError { try StreamSocket.connect(to: address) }?.errno == .connectionRefused)
    }

    @Test func operationsAfterCloseThrowClosed() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("closed.sock")
            let listener = try StreamListener.bind(to: address)
            let client = try StreamSocket.connect(to: address)
            try client.close()
            try client.close()

            let readError = try #require(socketError { try client.read(upTo: 1) })
            #expect(readError.code == .closed)
            // The operation is the C call made: recvmsg while the socket keeps
            // incoming descriptors (the default), recv ("read") otherwise.
            #expect(["read", "recvmsg"].contains(readError.operation))
            #expect(readError.description == "\(readError.operation)(\(address)): the socket is closed")
            #expect(socketError { try client.writeAll([1]) }?.code == .closed)
            #expect(socketError { try client.readExactly(1) }?.code == .closed)
            #expect(socketError { try client.shutdown(.both) }?.code == .closed)
            #expect(socketError { try client.setReadTimeout(.seconds(1)) }?.code == .closed)
            #expect(socketError { try client.peerAddress() }?.code == .closed)
            withExtendedLifetime(listener) {}
        }
    }

    // MARK: Pairs

    @Test func pairTalksBothWays() throws {
        let (a, b) = try StreamSocket.makePair()
        #expect(try a.localAddress() == .unnamed)
        #expect(try a.peerAddress() == .unnamed)
        try a.writeAll(Array("to b".utf8))
        #expect(try b.readExactly(4) == Array("to b".utf8))
        try b.writeAll(Array("to a".utf8))
        #expect(try a.readExactly(4) == Array("to a".utf8))
        #expect(a.descriptor != b.descriptor)
    }

    // MARK: Descriptors

    @Test func descriptorsAreCloseOnExec() throws {
        let address = try uniqueAbstractAddress("cloexec")
        let listener = try StreamListener.bind(to: address)
        let client = try StreamSocket.connect(to: address)
        let (accepted, _) = try listener.accept()
        let (a, b) = try StreamSocket.makePair()
        for (name, descriptor) in [("listener", listener.descriptor), ("connected", client.descriptor),
                           ("accepted", accepted.descriptor), ("pair.0", a.descriptor), ("pair.1", b.descriptor)] {
            let fd = descriptor.rawValue
            #expect(fd >= 0, "\(name)")
            #expect(isCloseOnExec(fd), "\(name) descriptor \(fd) lacks FD_CLOEXEC")
        }
    }
}
