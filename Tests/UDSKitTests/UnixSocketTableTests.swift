#if os(Linux)
// Linux only: elsewhere there is no socket table to read.
import Foundation
import Glibc
import Testing
import UDSKit

/// The kernel's socket table as UDSKit reads it (Linux): peers, queue
/// lengths, and which sockets hold their address.
@Suite("UnixSocketTable")
struct UnixSocketTableTests {
    /// The socket inode of a descriptor, as `/proc/PID/fd` shows it.
    private func inode(_ descriptor: CInt) -> UInt64 {
        var status = stat()
        fstat(descriptor, &status)
        return UInt64(status.st_ino)
    }

    @Test("a connected pair names each other as peers, with the bytes queued to read")
    func peersAndQueues() throws {
        let (first, second) = try StreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        try first.writeAll(Array("hello".utf8))
        let table = try UnixSocketTable.entries(withProcesses: false)
        let (one, two) = (inode(first.descriptor.rawValue), inode(second.descriptor.rawValue))
        let firstEntry = try #require(table.first { $0.socketInode == one })
        let secondEntry = try #require(table.first { $0.socketInode == two })
        #expect(firstEntry.peerInode == two)
        #expect(secondEntry.peerInode == one)
        #expect(secondEntry.receiveQueue == 5)
        #expect(firstEntry.receiveQueue == 0)
        #expect(firstEntry.state == .connected && firstEntry.address.kind == .unnamed)
        #expect(!firstEntry.holdsAddress, "an unnamed socket holds no address")
    }

    @Test("a bound datagram socket holds its address after a peer connects to it")
    func datagramHolder() throws {
        let name = "udsk-table-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let address = try UnixAddress(abstractName: name)
        let server = try DatagramSocket.bind(to: address)
        defer { try? server.close() }
        let client = try DatagramSocket.unbound()
        defer { try? client.close() }
        try client.connect(to: address)
        _ = try client.send(Array("x".utf8))
        let table = try UnixSocketTable.entries(withProcesses: false)
        let entry = try #require(table.first { $0.socketInode == inode(server.descriptor.rawValue) })
        #expect(entry.address == address)
        #expect(entry.holdsAddress, "state \(entry.state)")
        #expect(entry.receiveQueue != nil)
        if case .listening(let type, _) = try SocketFileStatus.probe(address) {
            #expect(type == .datagram)
        } else {
            Issue.record("the probe did not find the bound datagram socket")
        }
    }

    @Test("an accepted connection reports its listener's address but does not hold it")
    func acceptedConnection() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("l.sock")
            let listener = try StreamListener.bind(to: address)
            defer { try? listener.close() }
            let client = try StreamSocket.connect(to: address)
            defer { try? client.close() }
            let (accepted, _) = try listener.accept()
            defer { try? accepted.close() }
            let table = try UnixSocketTable.entries(withProcesses: false)
            let entry = try #require(table.first { $0.socketInode == inode(accepted.descriptor.rawValue) })
            #expect(entry.address == address)
            #expect(entry.state == .connected)
            #expect(!entry.holdsAddress)
            #expect(entry.peerInode == inode(client.descriptor.rawValue))
            let listening = try #require(table.first { $0.socketInode == inode(listener.descriptor.rawValue) })
            #expect(listening.holdsAddress && listening.state == .listening)
        }
    }
}
#endif
