import Foundation
import Glibc
import SystemPackage
import Testing
import UDSKit

/// The safe-bind rules: replace a stale socket file, never a live server's
/// socket, never a file that is not a socket; remove only our own file on close.
@Suite("Binding")
struct BindingTests {
    /// Connects, accepts and echoes one message: the listener is alive.
    private func assertAccepts(_ listener: StreamListener, at address: UnixAddress) throws {
        let client = try StreamSocket.connect(to: address)
        let (server, _) = try listener.accept()
        try client.writeAll(Array("alive?".utf8))
        #expect(try server.readExactly(6) == Array("alive?".utf8))
        try server.writeAll(Array("yes".utf8))
        #expect(try client.readExactly(3) == Array("yes".utf8))
        try client.close()
        try server.close()
    }

    // MARK: (1) Stale socket files

    @Test func freshBindReportsNoReplacement() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("fresh.sock")
            let listener = try StreamListener.bind(to: address)
            #expect(!listener.replacedStaleSocket)
            #expect(listener.address == address)
            #expect(fileIdentity(atPath: directory.path("fresh.sock"))?.isSocket == true)
            try assertAccepts(listener, at: address)
        }
    }

    @Test func staleSocketFileIsReplaced() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("stale.sock")
            try makeStaleSocketFile(atPath: path)
            let staleFile = try #require(fileIdentity(atPath: path))
            // A second link keeps the stale inode allocated, so a new socket
            // file cannot get its number: a replaced file has another inode.
            try #require(link(path, directory.path("stale.keep")) == 0)

            let listener = try StreamListener.bind(to: UnixAddress(path: path))
            #expect(listener.replacedStaleSocket)
            let newFile = try #require(fileIdentity(atPath: path))
            #expect(newFile.isSocket)
            #expect(!newFile.isSameFile(as: staleFile))
            try assertAccepts(listener, at: UnixAddress(path: path))
        }
    }

    @Test func staleFileFromAProcessThatNeverUnlinkedIsReplaced() throws {
        // The way a crashed C server leaves it: socket, bind, exit without unlink.
        try withTemporaryDirectory { directory in
            let path = directory.path("crashed.sock")
            let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0)
            try #require(fd >= 0)
            var storage = sockaddr_un()
            storage.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &storage.sun_path) { sunPath in
                sunPath.copyBytes(from: Array(path.utf8) + [0])
            }
            let bound = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            try #require(bound == 0)
            try #require(Glibc.listen(fd, 1) == 0)
            Glibc.close(fd)
            #expect(fileIdentity(atPath: path)?.isSocket == true)

            let listener = try StreamListener.bind(to: UnixAddress(path: path))
            #expect(listener.replacedStaleSocket)
            try assertAccepts(listener, at: UnixAddress(path: path))
        }
    }

    @Test func staleFilesAreReplacedForDatagramAndSeqpacketToo() throws {
        try withTemporaryDirectory { directory in
            let datagramPath = directory.path("d.sock")
            try makeStaleSocketFile(atPath: datagramPath)
            let datagram = try DatagramSocket.bind(to: UnixAddress(path: datagramPath))
            #expect(datagram.replacedStaleSocket)

            let seqpacketPath = directory.path("q.sock")
            try makeStaleSocketFile(atPath: seqpacketPath)
            let seqpacket = try SeqpacketListener.bind(to: UnixAddress(path: seqpacketPath))
            #expect(seqpacket.replacedStaleSocket)
            let client = try SeqpacketSocket.connect(to: UnixAddress(path: seqpacketPath))
            _ = try seqpacket.accept()
            try client.close()
        }
    }

    // MARK: (2) A live server is never replaced

    @Test func liveListenerIsNotReplaced() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("live.sock")
            let address = try UnixAddress(path: path)
            let first = try StreamListener.bind(to: address)
            let before = try #require(fileIdentity(atPath: path))

            let error = try #require(socketError { try StreamListener.bind(to: address) })
            #expect(error.code == .addressInUse)
            #expect(error.operation == "bind")
            #expect(error.address == path)
            #expect(error.description == "bind(\(path)): a server is already listening there")

            // The first listener's file is intact and it still accepts.
            let after = try #require(fileIdentity(atPath: path))
            #expect(after.isSameFile(as: before))
            try assertAccepts(first, at: address)

            // Even with replaceStaleSocket the answer is the same, and so for other kinds.
            #expect(socketError { try SeqpacketListener.bind(to: address) }?.code == .addressInUse)
            #expect(socketError { try DatagramSocket.bind(to: address) }?.code == .addressInUse)
            #expect(fileIdentity(atPath: path)?.isSameFile(as: before) == true)
            try assertAccepts(first, at: address)
        }
    }

    @Test func failedBindDoesNotConnectToTheLiveListener() throws {
        // Probing must not leave a connection in the live server's accept queue.
        try withTemporaryDirectory { directory in
            let address = try directory.address("untouched.sock")
            let listener = try StreamListener.bind(to: address)
            #expect(socketError { try StreamListener.bind(to: address) }?.code == .addressInUse)
            #expect(socketError { try SeqpacketListener.bind(to: address) }?.code == .addressInUse)
            #expect(socketError { try DatagramSocket.bind(to: address) }?.code == .addressInUse)

            // Nothing is waiting to be accepted: accept times out.
            let error = socketError { try listener.accept(timeout: .milliseconds(100)) }
            #expect(error?.code == .timedOut)
        }
    }

    @Test func listenerWithAFullBacklogCountsAsLive() throws {
        // With a backlog of 0, one pending connection fills the queue; a
        // listener that cannot take another connection right now is still live.
        try withTemporaryDirectory { directory in
            let address = try directory.address("busy.sock")
            let listener = try StreamListener.bind(to: address, options: BindOptions(backlog: 0))
            let pending = try StreamSocket.connect(to: address)
            #expect(socketError { try StreamListener.bind(to: address) }?.code == .addressInUse)
            let (server, _) = try listener.accept()
            try pending.writeAll([42])
            #expect(try server.readExactly(1) == [42])
        }
    }

    // MARK: (3) Files that are not sockets are never touched

    @Test func regularFileIsNotReplaced() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("file.sock")
            try writeFile(path, contents: "precious data\n")
            let before = try #require(fileIdentity(atPath: path))

            let error = try #require(socketError { try StreamListener.bind(to: UnixAddress(path: path)) })
            #expect(error.code == .notASocket(.regular))
            #expect(error.description == "bind(\(path)): the path exists and is a regular file, not a socket; refusing to replace it")
            #expect(try readFile(path) == "precious data\n")
            #expect(fileIdentity(atPath: path)?.isSameFile(as: before) == true)

            #expect(socketError { try DatagramSocket.bind(to: UnixAddress(path: path)) }?.code == .notASocket(.regular))
            #expect(socketError { try SeqpacketListener.bind(to: UnixAddress(path: path)) }?.code == .notASocket(.regular))
            #expect(
                socketError { try StreamSocket.connect(to: UnixAddress(path: directory.path("x")), from: UnixAddress(path: path)) }?.code
                    == .notASocket(.regular))
            #expect(try readFile(path) == "precious data\n")
        }
    }

    @Test func directoryIsNotReplaced() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("dir.sock")
            try #require(mkdir(path, 0o755) == 0)
            try writeFile(path + "/inside", contents: "keep me")

            let error = try #require(socketError { try StreamListener.bind(to: UnixAddress(path: path)) })
            #expect(error.code == .notASocket(.directory))
            #expect(error.description.contains("is a directory, not a socket"))
            #expect(fileIdentity(atPath: path)?.type == UInt32(S_IFDIR))
            #expect(try readFile(path + "/inside") == "keep me")
        }
    }

    @Test func symlinkToAStaleSocketIsNotReplaced() throws {
        try withTemporaryDirectory { directory in
            let target = directory.path("target.sock")
            try makeStaleSocketFile(atPath: target)
            let targetBefore = try #require(fileIdentity(atPath: target))
            let link = directory.path("link.sock")
            try #require(symlink(target, link) == 0)

            let error = try #require(socketError { try StreamListener.bind(to: UnixAddress(path: link)) })
            #expect(error.code == .notASocket(.symbolicLink))
            #expect(error.description.contains("symbolic link"))
            // The link and the socket it points to are both as they were.
            #expect(fileIdentity(atPath: link)?.type == UInt32(S_IFLNK))
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == target)
            #expect(fileIdentity(atPath: target)?.isSameFile(as: targetBefore) == true)
        }
    }

    @Test func symlinkToARegularFileIsNotReplaced() throws {
        try withTemporaryDirectory { directory in
            let target = directory.path("target.txt")
            try writeFile(target, contents: "target contents")
            let link = directory.path("link.sock")
            try #require(symlink(target, link) == 0)

            #expect(socketError { try StreamListener.bind(to: UnixAddress(path: link)) }?.code == .notASocket(.symbolicLink))
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == target)
            #expect(try readFile(target) == "target contents")

            // A dangling link is left alone too.
            let dangling = directory.path("dangling.sock")
            try #require(symlink(directory.path("nowhere"), dangling) == 0)
            #expect(socketError { try DatagramSocket.bind(to: UnixAddress(path: dangling)) }?.code == .notASocket(.symbolicLink))
            #expect(fileIdentity(atPath: dangling)?.type == UInt32(S_IFLNK))
        }
    }

    @Test func namedPipeIsNotReplaced() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("fifo.sock")
            try #require(mkfifo(path, 0o600) == 0)
            let error = try #require(socketError { try StreamListener.bind(to: UnixAddress(path: path)) })
            #expect(error.code == .notASocket(.fifo))
            #expect(fileIdentity(atPath: path)?.type == UInt32(S_IFIFO))
        }
    }

    @Test func fileTypeLettersAndNames() {
        let all: [UDSKit.FileType] = [.regular, .directory, .symbolicLink, .characterDevice, .blockDevice, .socket, .fifo, .unknown]
        #expect(String(all.map(\.letter)) == "-dlcbsp?")
        #expect(Set(all.map(\.name)).count == all.count)
        #expect(UDSKit.FileType.regular.name == "regular file")
    }

    // MARK: (4) Close removes only our own file

    @Test func closeRemovesTheSocketFile() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("gone.sock")
            let listener = try StreamListener.bind(to: UnixAddress(path: path))
            #expect(fileExists(atPath: path))
            try listener.close()
            #expect(!fileExists(atPath: path))

            let datagram = try DatagramSocket.bind(to: UnixAddress(path: path))
            #expect(fileExists(atPath: path))
            try datagram.close()
            #expect(!fileExists(atPath: path))

            let seqpacket = try SeqpacketListener.bind(to: UnixAddress(path: path))
            #expect(fileExists(atPath: path))
            try seqpacket.close()
            #expect(!fileExists(atPath: path))
        }
    }

    @Test func droppingAListenerRemovesItsFile() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("dropped.sock")
            do {
                let listener = try StreamListener.bind(to: UnixAddress(path: path))
                #expect(fileExists(atPath: path))
                withExtendedLifetime(listener) {}
            }
            #expect(!fileExists(atPath: path))
        }
    }

    @Test func closeDoesNotRemoveASuccessorsSocket() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("handover.sock")
            let address = try UnixAddress(path: path)
            let first = try StreamListener.bind(to: address)
            try #require(unlink(path) == 0)
            let second = try StreamListener.bind(to: address)
            #expect(!second.replacedStaleSocket)
            let secondFile = try #require(fileIdentity(atPath: path))

            try first.close()
            // The path still names the second listener's socket, and it accepts.
            #expect(fileIdentity(atPath: path)?.isSameFile(as: secondFile) == true)
            try assertAccepts(second, at: address)

            try second.close()
            #expect(!fileExists(atPath: path))
        }
    }

    @Test func droppingDoesNotRemoveASuccessorsSocket() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("handover.sock")
            let address = try UnixAddress(path: path)
            var first: DatagramSocket? = try DatagramSocket.bind(to: address)
            try #require(unlink(path) == 0)
            let second = try DatagramSocket.bind(to: address)
            let secondFile = try #require(fileIdentity(atPath: path))
            #expect(first != nil)
            first = nil
            #expect(fileIdentity(atPath: path)?.isSameFile(as: secondFile) == true)
            try DatagramSocket.unbound().send(Array("ok".utf8), to: address)
            #expect(try second.receive().bytes == Array("ok".utf8))
        }
    }

    @Test func closeDoesNotRemoveAFileThatReplacedTheSocket() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("replaced.sock")
            let listener = try StreamListener.bind(to: UnixAddress(path: path))
            try #require(unlink(path) == 0)
            try writeFile(path, contents: "not yours")
            try listener.close()
            #expect(try readFile(path) == "not yours")
        }
    }

    @Test func removeOnCloseFalseKeepsTheFile() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("kept.sock")
            let listener = try StreamListener.bind(to: UnixAddress(path: path), options: BindOptions(removeOnClose: false))
            try listener.close()
            #expect(fileIdentity(atPath: path)?.isSocket == true)

            let handedOver = try StreamListener.bind(to: UnixAddress(path: directory.path("handed.sock")))
            handedOver.keepSocketFileOnClose()
            try handedOver.close()
            #expect(fileIdentity(atPath: directory.path("handed.sock"))?.isSocket == true)
        }
    }

    // MARK: (5) Stale files can be protected

    @Test func staleSocketIsKeptWhenReplacingIsNotAllowed() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("stale.sock")
            try makeStaleSocketFile(atPath: path)
            let before = try #require(fileIdentity(atPath: path))

            let error = try #require(socketError {
                try StreamListener.bind(to: UnixAddress(path: path), options: BindOptions(replaceStaleSocket: false))
            })
            #expect(error.code == .staleSocket)
            #expect(error.description == "bind(\(path)): a stale socket file is there and replacing it was not allowed")
            #expect(fileIdentity(atPath: path)?.isSameFile(as: before) == true)

            #expect(socketError {
                try DatagramSocket.bind(to: UnixAddress(path: path), options: BindOptions(replaceStaleSocket: false))
            }?.code == .staleSocket)
            #expect(fileIdentity(atPath: path)?.isSameFile(as: before) == true)
        }
    }

    // MARK: (6) Permissions

    @Test func ownerOnlyPermissions() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("private.sock")
            let listener = try StreamListener.bind(
                to: UnixAddress(path: path), options: BindOptions(permissions: [.ownerReadWrite]))
            let file = try #require(fileIdentity(atPath: path))
            #expect(file.isSocket)
            #expect(file.permissions == 0o600)
            try assertAccepts(listener, at: UnixAddress(path: path))
        }
    }

    @Test(arguments: [0o666, 0o660, 0o640, 0o700] as [UInt16])
    func permissionsComeOutExactly(mode: UInt16) throws {
        // The default umask (022) would narrow 0o666 to 0o644; the mode asked for wins.
        try withTemporaryDirectory { directory in
            let path = directory.path("mode.sock")
            let options = BindOptions(permissions: FilePermissions(rawValue: mode_t(mode)))
            let listener = try StreamListener.bind(to: UnixAddress(path: path), options: options)
            #expect(fileIdentity(atPath: path)?.permissions == UInt32(mode))
            try listener.close()

            let datagram = try DatagramSocket.bind(to: UnixAddress(path: path), options: options)
            #expect(fileIdentity(atPath: path)?.permissions == UInt32(mode))
            try datagram.close()
        }
    }

    @Test func permissionsOfAReplacedStaleSocket() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("stale.sock")
            try makeStaleSocketFile(atPath: path)
            let listener = try StreamListener.bind(
                to: UnixAddress(path: path), options: BindOptions(permissions: [.ownerReadWrite, .groupReadWrite]))
            #expect(listener.replacedStaleSocket)
            #expect(fileIdentity(atPath: path)?.permissions == 0o660)
        }
    }

    // MARK: (7) Datagram sockets

    @Test func liveDatagramSocketIsNotReplaced() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("dgram.sock")
            let address = try UnixAddress(path: path)
            let first = try DatagramSocket.bind(to: address)
            let before = try #require(fileIdentity(atPath: path))

            let error = try #require(socketError { try DatagramSocket.bind(to: address) })
            #expect(error.code == .addressInUse)
            #expect(error.description == "bind(\(path)): a server is already listening there")
            #expect(fileIdentity(atPath: path)?.isSameFile(as: before) == true)

            // Probed with a stream socket, a datagram socket counts as live too.
            #expect(socketError { try StreamListener.bind(to: address) }?.code == .addressInUse)

            try DatagramSocket.unbound().send(Array("still here".utf8), to: address)
            #expect(try first.receive().bytes == Array("still here".utf8))
        }
    }

    @Test func streamListenerProbedByDatagramBindCountsAsLive() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("stream.sock")
            let address = try UnixAddress(path: path)
            let listener = try StreamListener.bind(to: address)
            let before = try #require(fileIdentity(atPath: path))

            let error = try #require(socketError { try DatagramSocket.bind(to: address) })
            #expect(error.code == .addressInUse)
            #expect(fileIdentity(atPath: path)?.isSameFile(as: before) == true)
            try assertAccepts(listener, at: address)
        }
    }

    // MARK: (8) Abstract names

    @Test func abstractNameInUse() throws {
        let address = try uniqueAbstractAddress("inuse")
        let listener = try StreamListener.bind(to: address)
        #expect(!listener.replacedStaleSocket)

        let error = try #require(socketError { try StreamListener.bind(to: address) })
        #expect(error.code == .addressInUse)
        #expect(error.description == "bind(\(address)): a server is already listening there")
        try assertAccepts(listener, at: address)

        // Linux keeps one abstract namespace per socket type.
        let datagramAddress = try uniqueAbstractAddress("dinuse")
        let datagram = try DatagramSocket.bind(to: datagramAddress)
        #expect(socketError { try DatagramSocket.bind(to: datagramAddress) }?.code == .addressInUse)
        let seqpacketAddress = try uniqueAbstractAddress("qinuse")
        let seqpacket = try SeqpacketListener.bind(to: seqpacketAddress)
        #expect(socketError { try SeqpacketListener.bind(to: seqpacketAddress) }?.code == .addressInUse)
        withExtendedLifetime((datagram, seqpacket)) {}

        // The name is free again once the listener closes.
        try listener.close()
        let again = try StreamListener.bind(to: address)
        #expect(!again.replacedStaleSocket)
        try assertAccepts(again, at: address)
    }

    @Test func pathThatIsNotUTF8() throws {
        try withTemporaryDirectory { directory in
            let bytes = Array(directory.path("raw-").utf8) + [0xFF, 0xFE]
            func exists() -> Bool {
                var status = stat()
                return (bytes + [0]).withUnsafeBufferPointer { buffer in
                    buffer.withMemoryRebound(to: CChar.self) { lstat($0.baseAddress!, &status) }
                } == 0
            }
            let address = try UnixAddress(pathBytes: bytes)
            #expect(address.bytes == bytes)

            // Binding and connecting use the bytes as given.
            let listener = try StreamListener.bind(to: address)
            #expect(exists())
            #expect(try listener.localAddress().bytes == bytes)
            try assertAccepts(listener, at: address)
            try listener.close()

            // The file operations of safe bind use the same bytes: close removes
            // the file, and a stale file at such a path is replaced.
            #expect(!exists(), "close left the socket file")
            let stale = try StreamListener.bind(to: address, options: BindOptions(removeOnClose: false))
            try stale.close()
            #expect(exists())
            let rebound = try StreamListener.bind(to: address)
            #expect(rebound.replacedStaleSocket)
            try rebound.close()
            #expect(!exists())
            if exists() { _ = (bytes + [0]).withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { unlink($0.baseAddress!) } } }
        }
    }

    @Test func unnamedAddressCannotBeBound() throws {
        let error = try #require(socketError { try StreamListener.bind(to: .unnamed) })
        guard case .invalidAddress = error.code else {
            Issue.record("expected .invalidAddress, got \(error.code)")
            return
        }
        #expect(error.operation == "bind")
    }

    @Test func missingDirectoryIsReported() throws {
        try withTemporaryDirectory { directory in
            let path = directory.path("no/such/dir.sock")
            let error = try #require(socketError { try StreamListener.bind(to: UnixAddress(path: path)) })
            #expect(error.errno == .noSuchFileOrDirectory)
            #expect(error.description.hasPrefix("bind(\(path)): "))
        }
    }

    // MARK: (9) Closing

    @Test func closingTwiceIsFine() throws {
        try withTemporaryDirectory { directory in
            let listener = try StreamListener.bind(to: directory.address("twice.sock"))
            try listener.close()
            try listener.close()
            let datagram = try DatagramSocket.bind(to: directory.address("twice-d.sock"))
            try datagram.close()
            try datagram.close()
            let seqpacket = try SeqpacketListener.bind(to: directory.address("twice-q.sock"))
            try seqpacket.close()
            try seqpacket.close()
            #expect(!fileExists(atPath: directory.path("twice.sock")))
        }
    }

    @Test func operationsAfterCloseThrowClosed() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("closed.sock")
            let listener = try StreamListener.bind(to: address)
            try listener.close()
            let acceptError = try #require(socketError { try listener.accept() })
            #expect(acceptError.code == .closed)
            #expect(acceptError.operation == "accept")
            #expect(acceptError.description == "accept(\(address)): the socket is closed")
            #expect(socketError { try listener.localAddress() }?.code == .closed)

            let datagram = try DatagramSocket.bind(to: directory.address("closed-d.sock"))
            try datagram.close()
            #expect(socketError { try datagram.receive() }?.code == .closed)
            #expect(socketError { try datagram.send([1], to: address) }?.code == .closed)
            #expect(socketError { try datagram.setReadTimeout(.seconds(1)) }?.code == .closed)

            let seqpacket = try SeqpacketListener.bind(to: directory.address("closed-q.sock"))
            try seqpacket.close()
            #expect(socketError { try seqpacket.accept() }?.code == .closed)
        }
    }
}
