import Glibc
import Synchronization
import SystemPackage
import Testing
import UDSKit

/// A pipe whose read end is returned and whose write end is passed over a socket.
private func makePipe() throws -> (read: CInt, write: CInt) {
    var ends: [CInt] = [-1, -1]
    try #require(pipe(&ends) == 0)
    return (ends[0], ends[1])
}

/// Writes through a received descriptor and reads it back at the pipe's read end.
private func expectUsable(_ received: ReceivedDescriptor, readEnd: CInt) throws {
    let descriptor = try #require(received.take())
    defer { try? descriptor.close() }
    let written = try Array("through".utf8).withUnsafeBytes { try descriptor.write($0) }
    #expect(written == 7)
    var bytes = [UInt8](repeating: 0, count: 16)
    let count = bytes.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
    #expect(Array(bytes[..<max(count, 0)]) == Array("through".utf8))
}

@Suite("Async credentials, descriptors and access")
struct AsyncAncillaryTests {
    @Test func streamPassesDescriptors() async throws {
        let (first, second) = try AsyncStreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        let pipe = try makePipe()
        defer { close(pipe.read) }
        let message = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
        defer { message.deallocate() }
        message[0] = UInt8(ascii: "x")
        try await first.writeAll(UnsafeRawBufferPointer(message), descriptors: [FileDescriptor(rawValue: pipe.write)], timeout: endsRatherThanHangs)
        close(pipe.write)  // the peer holds its own copy now
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
        defer { buffer.deallocate() }
        let (received, descriptors) = try await second.receiveWithDescriptors(into: buffer, timeout: endsRatherThanHangs)
        let count = received.count
        #expect(count == 1)
        #expect(descriptors.count == 1)
        if let received = descriptors.first { try expectUsable(received, readEnd: pipe.read) }
    }

    @Test func aPlainAsyncReadKeepsTheDescriptorsItsBytesCarried() async throws {
        let (first, second) = try AsyncStreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        second.keepsIncomingDescriptors = true
        let pipe = try makePipe()
        defer { close(pipe.read) }
        let one = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
        defer { one.deallocate() }
        one[0] = 42
        try await first.writeAll(UnsafeRawBufferPointer(one), descriptors: [FileDescriptor(rawValue: pipe.write)])
        close(pipe.write)
        #expect(try await second.read(upTo: 16, timeout: endsRatherThanHangs) == [42])
        // The byte is gone, its descriptor is not: it comes with the next receive.
        try await first.writeAll([7])
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
        defer { buffer.deallocate() }
        let (received, descriptors) = try await second.receiveWithDescriptors(into: buffer, timeout: endsRatherThanHangs)
        let count = received.count
        #expect(count == 1 && buffer[0] == 7)
        #expect(descriptors.count == 1)
        if let received = descriptors.first { try expectUsable(received, readEnd: pipe.read) }
    }

    @Test func tooManyDescriptorsFailBeforeAnySystemCall() async throws {
        let (first, second) = try AsyncSeqpacketSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        let one = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
        defer { one.deallocate() }
        // Not even valid descriptors: the count alone is refused.
        let error = await #expect(throws: SocketError.self) {
            try await first.send(UnsafeRawBufferPointer(one), descriptors: Array(repeating: FileDescriptor(rawValue: -1), count: 254))
        }
        #expect(error?.code == .tooManyDescriptors(count: 254, limit: 253))
    }

    @Test func seqpacketAndDatagramPassDescriptors() async throws {
        let pipe = try makePipe()
        defer {
            close(pipe.read)
            close(pipe.write)
        }
        let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: 3, alignment: 1)
        defer { payload.deallocate() }
        payload.copyBytes(from: [1, 2, 3])
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
        defer { buffer.deallocate() }

        let (seqA, seqB) = try AsyncSeqpacketSocket.makePair()
        defer {
            try? seqA.close()
            try? seqB.close()
        }
        try await seqA.send(UnsafeRawBufferPointer(payload), descriptors: [FileDescriptor(rawValue: pipe.write)])
        let (message, descriptors) = try await seqB.receiveWithDescriptors(into: buffer, timeout: endsRatherThanHangs)
        #expect(message.count == 3 && !message.isTruncated)
        #expect(descriptors.count == 1)
        if let received = descriptors.first { try expectUsable(received, readEnd: pipe.read) }

        let receiver = try AsyncDatagramSocket.bind(to: try uniqueAbstractAddress("async-fd-rx"))
        let sender = try AsyncDatagramSocket.unbound()
        defer {
            try? receiver.close()
            try? sender.close()
        }
        try await sender.send(UnsafeRawBufferPointer(payload), descriptors: [FileDescriptor(rawValue: pipe.write)], to: try receiver.localAddress())
        let (datagram, passed) = try await receiver.receiveWithDescriptors(into: buffer, timeout: endsRatherThanHangs)
        #expect(datagram.count == 3)
        #expect(datagram.sender?.kind == .unnamed)
        #expect(passed.count == 1)
        if let received = passed.first { try expectUsable(received, readEnd: pipe.read) }
    }

    @Test func datagramsCarryTheirSendersCredentials() async throws {
        let receiver = try AsyncDatagramSocket.bind(to: try uniqueAbstractAddress("async-cred"))
        let sender = try AsyncDatagramSocket.unbound()
        defer {
            try? receiver.close()
            try? sender.close()
        }
        try receiver.setReceivesCredentials(true)
        try await sender.send([9], to: try receiver.localAddress())
        var iterator = receiver.messages().makeAsyncIterator()
        let message = try #require(try await iterator.next())
        #expect(message.receipt.credentials == PeerCredentials(processID: getpid(), userID: getuid(), groupID: getgid()))
    }

    @Test func anAsyncListenerRefusesPeersItsPolicyExcludes() async throws {
        let refusals = Mutex<[PeerCredentials]>([])
        let seen = Atomic<Int>(0)
        // Refuses the first peer, admits the second.
        let policy = AccessPolicy({ _ in seen.add(1, ordering: .relaxed).oldValue > 0 }) { refused in
            refusals.withLock { $0.append(refused) }
        }
        let listener = try AsyncStreamListener.bind(to: try uniqueAbstractAddress("async-policy"), admitting: policy)
        defer { try? listener.close() }
        // Bound clients, so the accepted connection shows which one it is.
        let refused = try await AsyncStreamSocket.connect(to: listener.endpoint, from: try uniqueAbstractAddress("refused"))
        let admitted = try await AsyncStreamSocket.connect(to: listener.endpoint, from: try uniqueAbstractAddress("admitted"))
        defer {
            try? refused.close()
            try? admitted.close()
        }
        let (connection, _) = try await listener.accept(timeout: endsRatherThanHangs)
        defer { try? connection.close() }
        #expect(try connection.peerAddress() == (try admitted.localAddress()))
        // The refused client sees its connection end.
        let ended = try? await refused.read(upTo: 1, timeout: endsRatherThanHangs)
        #expect(ended == nil || ended == [])
        let recorded = refusals.withLock { $0 }
        #expect(recorded.map(\.pidUidGid) == [PeerCredentials(processID: getpid(), userID: getuid(), groupID: getgid())])
    }
}
