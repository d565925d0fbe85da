import Foundation
import Glibc
import Testing
import UDSKit

@Suite("DatagramSocket")
struct DatagramSocketTests {
    @Test func messageBoundariesAreKept() throws {
        try withTemporaryDirectory { directory in
            let serverAddress = try directory.address("server.sock")
            let clientAddress = try directory.address("client.sock")
            let server = try DatagramSocket.bind(to: serverAddress)
            let client = try DatagramSocket.bind(to: clientAddress)
            try server.setReadTimeout(.seconds(10))

            let messages = [1, 1000, 60_000].enumerated().map { index, size in
                patternBytes(count: size, seed: UInt64(index + 1) * 0x9E37_79B9)
            }
            for message in messages {
                #expect(try client.send(message, to: serverAddress) == message.count)
            }
            for message in messages {
                let (bytes, receipt) = try server.receive(maximumSize: 65_536)
                #expect(receipt.count == message.count)
                #expect(bytes.count == message.count)
                #expect(bytes == message)
                #expect(!receipt.isTruncated)
                #expect(receipt.fullLength == nil)
                #expect(receipt.sender == clientAddress)
            }
        }
    }

    @Test func emptyMessagesAreMessagesToo() throws {
        let (a, b) = try DatagramSocket.makePair()
        try a.send([UInt8]())
        try a.send([5])
        let first = try b.receive()
        #expect(first.bytes == [])
        #expect(first.receipt.count == 0)
        #expect(!first.receipt.isTruncated)
        #expect(try b.receive().bytes == [5])
    }

    @Test func truncationIsReported() throws {
        let address = try uniqueAbstractAddress("trunc")
        let server = try DatagramSocket.bind(to: address)
        let client = try DatagramSocket.unbound()
        let message = patternBytes(count: 100, seed: 42)
        try client.send(message, to: address)
        try client.send(Array("next".utf8), to: address)

        var buffer = [UInt8](repeating: 0, count: 10)
        let receipt = try buffer.withUnsafeMutableBytes { raw in try server.receive(into: raw) }
        #expect(receipt.isTruncated)
        #expect(receipt.count == 10)
        #expect(receipt.fullLength == 100)
        #expect(buffer == Array(message.prefix(10)))

        // The rest of the cut message is gone; the next message is whole.
        let (next, nextReceipt) = try server.receive(maximumSize: 10)
        #expect(next == Array("next".utf8))
        #expect(!nextReceipt.isTruncated)
        #expect(nextReceipt.fullLength == nil)
    }

    @Test func truncationThroughTheArrayAPI() throws {
        let (a, b) = try DatagramSocket.makePair()
        try a.send([UInt8](repeating: 9, count: 100))
        let (bytes, receipt) = try b.receive(maximumSize: 10)
        #expect(bytes == [UInt8](repeating: 9, count: 10))
        #expect(receipt.isTruncated)
        #expect(receipt.count == 10)
        #expect(receipt.fullLength == 100)
    }

    @Test func senderPathIsReported() throws {
        try withTemporaryDirectory { directory in
            let serverAddress = try directory.address("server.sock")
            let clientPath = directory.path("client-\(getpid()).sock")
            let clientAddress = try UnixAddress(path: clientPath)
            let server = try DatagramSocket.bind(to: serverAddress)
            let client = try DatagramSocket.bind(to: clientAddress)
            #expect(try client.localAddress() == clientAddress)

            try client.send(Array("question".utf8), to: serverAddress)
            let (request, receipt) = try server.receive()
            #expect(request == Array("question".utf8))
            let sender = try #require(receipt.sender)
            #expect(sender == clientAddress)
            #expect(sender.path == clientPath)

            // The sender can be answered.
            try server.send(Array("answer".utf8), to: sender)
            let (reply, replyReceipt) = try client.receive()
            #expect(reply == Array("answer".utf8))
            #expect(replyReceipt.sender == serverAddress)

            try client.close()
            #expect(!fileExists(atPath: clientPath))
        }
    }

    @Test func senderAbstractNameIsReported() throws {
        let serverAddress = try uniqueAbstractAddress("dserver")
        let clientAddress = try uniqueAbstractAddress("dclient")
        let server = try DatagramSocket.bind(to: serverAddress)
        let client = try DatagramSocket.bind(to: clientAddress)
        try client.send([1, 2, 3], to: serverAddress)
        let (bytes, receipt) = try server.receive()
        #expect(bytes == [1, 2, 3])
        #expect(receipt.sender == clientAddress)
        #expect(receipt.sender?.kind == .abstract)
    }

    @Test func unboundSenderIsUnnamed() throws {
        let serverAddress = try uniqueAbstractAddress("anon")
        let server = try DatagramSocket.bind(to: serverAddress)
        let client = try DatagramSocket.unbound()
        #expect(try client.localAddress() == .unnamed)
        try client.send(Array("anonymous".utf8), to: serverAddress)
        let (bytes, receipt) = try server.receive()
        #expect(bytes == Array("anonymous".utf8))
        #expect(receipt.sender == .unnamed)
    }

    @Test func connectThenSend() throws {
        try withTemporaryDirectory { directory in
            let serverAddress = try directory.address("server.sock")
            let clientAddress = try directory.address("client.sock")
            let server = try DatagramSocket.bind(to: serverAddress)
            let client = try DatagramSocket.bind(to: clientAddress)
            try client.connect(to: serverAddress)
            #expect(try client.peerAddress() == serverAddress)

            #expect(try client.send(Array("one".utf8)) == 3)
            let message = [UInt8](repeating: 0x5A, count: 2000)
            let sent = try message.withUnsafeBytes { raw in try client.send(raw) }
            #expect(sent == 2000)
            #expect(try server.receive().bytes == Array("one".utf8))
            let (bytes, receipt) = try server.receive()
            #expect(bytes == message)
            #expect(receipt.sender == clientAddress)
        }
    }

    @Test func sendWithoutADestinationFails() throws {
        let socket = try DatagramSocket.unbound()
        let error = try #require(socketError { try socket.send([1]) })
        #expect(error.errno != nil)
    }

    @Test func sendToAMissingPathFails() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("nobody.sock")
            let socket = try DatagramSocket.unbound()
            let error = try #require(socketError { try socket.send([1], to: UnixAddress(path: path)) })
            #expect(error.errno == .noSuchFileOrDirectory)
            #expect(error.operation == "sendto")
            #expect(error.address == path)
        }
    }

    @Test func pairExchangesMessages() throws {
        let (a, b) = try DatagramSocket.makePair()
        try a.send([1])
        try a.send([2, 2])
        try b.send([3, 3, 3])
        let first = try b.receive()
        #expect(first.bytes == [1])
        #expect(first.receipt.sender == .unnamed)
        #expect(try b.receive().bytes == [2, 2])
        #expect(try a.receive().bytes == [3, 3, 3])
        #expect(isCloseOnExec(a.descriptor.rawValue))
        #expect(isCloseOnExec(b.descriptor.rawValue))
    }

    @Test func receiveTimeoutExpires() throws {
        let socket = try DatagramSocket.bind(to: uniqueAbstractAddress("timeout"))
        try socket.setReadTimeout(.milliseconds(50))
        #expect(socketError { try socket.receive() }?.code == .timedOut)
    }

    @Test func closeWakesABlockedReceive() throws {
        let socket = try DatagramSocket.bind(to: uniqueAbstractAddress("wake"))
        let receiver = BackgroundThread { try socket.receive().receipt }
        pause(.milliseconds(200))
        try socket.close()
        let error = #expect(throws: SocketError.self) { try receiver.join(timeout: .seconds(10)) }
        #expect(error?.code == .closed)
    }

    @Test func boundSocketIsCloseOnExec() throws {
        let socket = try DatagramSocket.bind(to: uniqueAbstractAddress("cloexec"))
        #expect(isCloseOnExec(socket.descriptor.rawValue))
        let unbound = try DatagramSocket.unbound()
        #expect(isCloseOnExec(unbound.descriptor.rawValue))
        withExtendedLifetime(unbound) {}
    }
}
