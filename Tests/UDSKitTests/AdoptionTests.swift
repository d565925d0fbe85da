import Foundation
import Glibc
import SystemPackage
import Testing
@testable import UDSKit

@Suite("Adopting descriptors")
struct AdoptionTests {
    /// A listening socket sent over SCM_RIGHTS is adopted on the other side
    /// and served on, blocking and async; closing it leaves the file, which
    /// the adopter did not create.
    @Test func aListenerReceivedOverSCMRightsIsServedOn() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let path = directory.path("handed.sock")
            let original = try StreamListener.bind(to: UnixAddress(path))
            let (sender, receiver) = try StreamSocket.makePair()
            try sender.writeAll([1], descriptors: [original.descriptor])
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
            defer { buffer.deallocate() }
            let (_, received) = try receiver.receiveWithDescriptors(into: buffer)
            let descriptor = try #require(received.first?.take())
            original.keepSocketFileOnClose()
            try original.close()

            let adopted = try AsyncStreamListener(adopting: descriptor)
            #expect(adopted.address == (try UnixAddress(path)))
            let client = try StreamSocket.connect(to: UnixAddress(path))
            let (connection, _) = try await adopted.accept(timeout: endsRatherThanHangs)
            try client.writeAll(Array("hi".utf8))
            #expect(try await connection.read(upTo: 2, timeout: endsRatherThanHangs) == Array("hi".utf8))
            try adopted.close()
            #expect(fileExists(atPath: path), "an adopted listener never removes a file it did not create")
        }
    }

    /// The kernel is asked what the descriptor is; the wrong kind is one clear error.
    @Test func aDescriptorOfTheWrongKindIsRefusedClearly() throws {
        let (first, second) = try StreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        let asListener = socketError { _ = try StreamListener(adopting: FileDescriptor(rawValue: dup(first.descriptor.rawValue))) }
        #expect(asListener?.operation == "adopt")
        #expect(asListener?.description.contains("a connected stream socket, not a listening stream socket") == true,
                "\(String(describing: asListener))")
        let asDatagram = socketError { _ = try DatagramSocket(adopting: FileDescriptor(rawValue: dup(first.descriptor.rawValue))) }
        #expect(asDatagram?.description.contains("not a datagram socket") == true, "\(String(describing: asDatagram))")

        var pipeEnds: [CInt] = [-1, -1]
        try #require(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[1]) }
        let notASocket = socketError { _ = try StreamSocket(adopting: FileDescriptor(rawValue: pipeEnds[0])) }
        #expect(notASocket?.code == .notASocket(.fifo))
    }

    /// A connected socket adopted from a pair works, and is close-on-exec.
    @Test func aConnectedSocketIsAdoptedCloseOnExec() throws {
        var fds: [CInt] = [-1, -1]
        try #require(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[1]) }
        #expect(!isCloseOnExec(fds[0]))
        let adopted = try StreamSocket(adopting: FileDescriptor(rawValue: fds[0]))
        #expect(isCloseOnExec(adopted.descriptor.rawValue))
        #expect(write(fds[1], "x", 1) == 1)
        #expect(try adopted.read(upTo: 1) == Array("x".utf8))
    }
}

