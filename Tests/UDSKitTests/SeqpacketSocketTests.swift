import Foundation
import Glibc
import Testing
import UDSKit

@Suite("SeqpacketSocket")
struct SeqpacketSocketTests {
    @Test func listenConnectAccept() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("seq.sock")
            let clientAddress = try directory.address("client.sock")
            let listener = try SeqpacketListener.bind(to: address)
            #expect(listener.address == address)
            #expect(!listener.replacedStaleSocket)
            #expect(try listener.localAddress() == address)

            let client = try SeqpacketSocket.connect(to: address, from: clientAddress)
            let (server, peer) = try listener.accept()
            #expect(peer == clientAddress)
            #expect(try server.peerAddress() == clientAddress)
            #expect(try server.localAddress() == address)
            #expect(try client.peerAddress() == address)
            #expect(try client.localAddress() == clientAddress)

            try client.send(Array("hello".utf8))
            let (bytes, receipt) = try server.receive()
            #expect(bytes == Array("hello".utf8))
            #expect(receipt.sender == nil)
            #expect(!receipt.isTruncated)

            for fd in [listener.descriptor, client.descriptor, server.descriptor] {
                #expect(isCloseOnExec(fd.rawValue))
            }
            try client.close()
            #expect(!fileExists(atPath: directory.path("client.sock")))
            try listener.close()
            #expect(!fileExists(atPath: directory.path("seq.sock")))
        }
    }

    @Test func messageBoundariesAreKept() throws {
        let address = try uniqueAbstractAddress("seqbounds")
        let listener = try SeqpacketListener.bind(to: address)
        let client = try SeqpacketSocket.connect(to: address)
        let (server, _) = try listener.accept()
        try server.setReadTimeout(.seconds(10))

        let messages = [1, 1000, 60_000].enumerated().map { index, size in
            patternBytes(count: size, seed: UInt64(index + 7) * 0x1234_5678)
        }
        for message in messages {
            #expect(try client.send(message) == message.count)
        }
        for message in messages {
            let (bytes, receipt) = try server.receive(maximumSize: 65_536)
            #expect(receipt.count == message.count)
            #expect(bytes == message)
            #expect(!receipt.isTruncated)
        }
    }

    @Test func truncationIsReported() throws {
        let (a, b) = try SeqpacketSocket.makePair()
        let message = patternBytes(count: 100, seed: 3)
        let sent = try message.withUnsafeBytes { raw in try a.send(raw) }
        #expect(sent == 100)
        try a.send(Array("after".utf8))

        var buffer = [UInt8](repeating: 0, count: 10)
        let receipt = try buffer.withUnsafeMutableBytes { raw in try b.receive(into: raw) }
        #expect(receipt.isTruncated)
        #expect(receipt.count == 10)
        #expect(receipt.fullLength == 100)
        #expect(buffer == Array(message.prefix(10)))

        let (next, nextReceipt) = try b.receive(maximumSize: 100)
        #expect(next == Array("after".utf8))
        #expect(!nextReceipt.isTruncated)
    }

    @Test func peerCloseIsAnEmptyUntruncatedReceive() throws {
        let address = try uniqueAbstractAddress("seqeof")
        let listener = try SeqpacketListener.bind(to: address)
        let client = try SeqpacketSocket.connect(to: address)
        let (server, _) = try listener.accept()
        try client.send([1, 2, 3])
        try client.close()

        #expect(try server.receive().bytes == [1, 2, 3])
        let (bytes, receipt) = try server.receive()
        #expect(bytes.isEmpty)
        #expect(receipt.count == 0)
        #expect(!receipt.isTruncated)
        #expect(receipt.fullLength == nil)
    }

    @Test func pairExchangesMessages() throws {
        let (a, b) = try SeqpacketSocket.makePair()
        try a.send([1])
        try a.send([2, 2])
        try b.send([3, 3, 3])
        #expect(try b.receive().bytes == [1])
        #expect(try b.receive().bytes == [2, 2])
        #expect(try a.receive().bytes == [3, 3, 3])
        #expect(isCloseOnExec(a.descriptor.rawValue))

        try a.shutdown(.write)
        let end = try b.receive()
        #expect(end.receipt.count == 0)
        #expect(!end.receipt.isTruncated)
    }

    @Test func connectToAMissingPath() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("none.sock")
            let error = try #require(socketError { try SeqpacketSocket.connect(to: UnixAddress(path: path)) })
            #expect(error.errno == .noSuchFileOrDirectory)
            #expect(error.description.hasPrefix("connect(\(path)):"))
        }
    }

    @Test func readTimeoutExpires() throws {
        let (a, b) = try SeqpacketSocket.makePair()
        try a.setReadTimeout(.milliseconds(50))
        #expect(socketError { try a.receive() }?.code == .timedOut)
        withExtendedLifetime(b) {}
    }

    @Test func closeWakesABlockedReceive() throws {
        let (a, b) = try SeqpacketSocket.makePair()
        let receiver = BackgroundThread { try a.receive().receipt }
        pause(.milliseconds(200))
        try a.close()
        let error = #expect(throws: SocketError.self) { try receiver.join(timeout: .seconds(10)) }
        #expect(error?.code == .closed)
        withExtendedLifetime(b) {}
    }

    @Test func closeWakesABlockedAccept() throws {
        let listener = try SeqpacketListener.bind(to: uniqueAbstractAddress("seqaccept"))
        let acceptor = BackgroundThread { try listener.accept().peer }
        pause(.milliseconds(200))
        try listener.close()
        let error = #expect(throws: SocketError.self) { try acceptor.join(timeout: .seconds(10)) }
        #expect(error?.code == .closed)
    }

    @Test func operationsAfterCloseThrowClosed() throws {
        let (a, _) = try SeqpacketSocket.makePair()
        try a.close()
        try a.close()
        #expect(socketError { try a.send([1]) }?.code == .closed)
        #expect(socketError { try a.receive() }?.code == .closed)
    }
}
