import SystemPackage
import Foundation
import Glibc
import Synchronization
import Testing
import UDSKit

// MARK: - Raw descriptor helpers

/// A pipe, close-on-exec unless asked otherwise.
func makePipe(closeOnExec: Bool = true) throws -> (read: CInt, write: CInt) {
    var ends: [CInt] = [-1, -1]
    guard pipe(&ends) == 0 else { throw POSIXFailure(call: "pipe", errno: errno) }
    if closeOnExec {
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
    }
    return (ends[0], ends[1])
}

/// Writes every byte to a raw descriptor.
func writeBytes(_ fd: CInt, _ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 {
            if errno == EINTR { continue }
            throw POSIXFailure(call: "write(\(fd))", errno: errno)
        }
        offset += written
    }
}

func writeText(_ fd: CInt, _ text: String) throws { try writeBytes(fd, Array(text.utf8)) }

/// One read of at most `count` bytes, waiting at most `timeout` for something
/// (data or the end) to be there; nil if nothing came.
func readAvailable(_ fd: CInt, upTo count: Int = 65536, timeout: Duration = .seconds(10)) throws -> [UInt8]? {
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    let deadline = ContinuousClock.now + timeout
    while true {
        let left = max(0, Int32((deadline - ContinuousClock.now) / .milliseconds(1)))
        let ready = poll(&entry, 1, left)
        if ready > 0 { break }
        if ready == 0 { return nil }
        if errno != EINTR { throw POSIXFailure(call: "poll(\(fd))", errno: errno) }
    }
    var buffer = [UInt8](repeating: 0, count: count)
    while true {
        let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if got >= 0 { return Array(buffer[..<got]) }
        if errno != EINTR { throw POSIXFailure(call: "read(\(fd))", errno: errno) }
    }
}

/// Everything up to the end of file; nil if the end does not come within
/// `timeout`, that is, if some write end is still open somewhere.
func readToEnd(_ fd: CInt, timeout: Duration = .seconds(10)) throws -> [UInt8]? {
    let deadline = ContinuousClock.now + timeout
    var result: [UInt8] = []
    while true {
        let left = deadline - ContinuousClock.now
        guard left > .zero, let chunk = try readAvailable(fd, timeout: left) else { return nil }
        if chunk.isEmpty { return result }
        result += chunk
    }
}

func readTextToEnd(_ fd: CInt, timeout: Duration = .seconds(10)) throws -> String? {
    try readToEnd(fd, timeout: timeout).map { String(decoding: $0, as: UTF8.self) }
}

/// Whether every write end of the pipe whose read end is `fd` is closed:
/// reading gives the end of file (after any data still in it) within `timeout`.
func pipeIsClosedEverywhere(_ readEnd: CInt, timeout: Duration = .seconds(10)) throws -> Bool {
    try readToEnd(readEnd, timeout: timeout) != nil
}

/// `pread` at `offset`: reads without moving the shared file offset.
func readAt(_ fd: CInt, offset: Int, count: Int) throws -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: count)
    let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
    guard got >= 0 else { throw POSIXFailure(call: "pread(\(fd))", errno: errno) }
    return Array(buffer[..<got])
}

/// `read` that moves the offset.
func readFrom(_ fd: CInt, count: Int) throws -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: count)
    let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
    guard got >= 0 else { throw POSIXFailure(call: "read(\(fd))", errno: errno) }
    return Array(buffer[..<got])
}

func fileOffset(_ fd: CInt) -> Int { Int(lseek(fd, 0, SEEK_CUR)) }

/// Creates `path` with `contents` and opens it read-write, close-on-exec.
func openFile(_ path: String, contents: String) throws -> CInt {
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw POSIXFailure(call: "open(\(path))", errno: errno) }
    try writeText(fd, contents)
    lseek(fd, 0, SEEK_SET)
    return fd
}

func closeAll(_ descriptors: [CInt]) {
    for fd in descriptors { close(fd) }
}

// MARK: - The three socket types behind one shape

/// The socket types that carry descriptors.
enum Carrier: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case stream, seqpacket, datagram
    var testDescription: String { rawValue }
}

/// A connected pair of one carrier type: `sender` sends, `receiver` receives.
struct Link {
    let carrier: Carrier
    /// Sends one message (stream: writes every byte) with descriptors attached.
    let sendBytes: ([UInt8], [CInt]) throws -> Void
    /// `receiveWithDescriptors` into a buffer of `capacity` bytes.
    let receiveBytes: (_ capacity: Int) throws -> (bytes: [UInt8], descriptors: [ReceivedDescriptor])
    /// The plain read or receive: no descriptors asked for.
    let plainReceive: (_ capacity: Int) throws -> [UInt8]
    let setReceiveTimeout: (Duration?) throws -> Void
    let setKeepsDescriptors: (Bool) -> Void
    let keepsDescriptors: () -> Bool
    let senderDescriptor: CInt
    let receiverDescriptor: CInt
    let closeSender: () throws -> Void
    let closeReceiver: () throws -> Void

    static func make(_ carrier: Carrier) throws -> Link {
        switch carrier {
        case .stream:
            let (sender, receiver) = try StreamSocket.makePair()
            return Link(
                carrier: carrier,
                sendBytes: { bytes, fds in try sender.writeAll(bytes, descriptors: fds.map(FileDescriptor.init(rawValue:))) },
                receiveBytes: { capacity in
                    var buffer = [UInt8](repeating: 0, count: capacity)
                    let (message, fds) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
                    return (Array(buffer[..<message.count]), fds)
                },
                plainReceive: { capacity in try receiver.read(upTo: capacity) },
                setReceiveTimeout: { try receiver.setReadTimeout($0) },
                setKeepsDescriptors: { receiver.keepsIncomingDescriptors = $0 },
                keepsDescriptors: { receiver.keepsIncomingDescriptors },
                senderDescriptor: sender.descriptor.rawValue, receiverDescriptor: receiver.descriptor.rawValue,
                closeSender: { try sender.close() }, closeReceiver: { try receiver.close() })
        case .seqpacket:
            let (sender, receiver) = try SeqpacketSocket.makePair()
            return Link(
                carrier: carrier,
                sendBytes: { bytes, fds in try sender.send(bytes, descriptors: fds.map(FileDescriptor.init(rawValue:))) },
                receiveBytes: { capacity in
                    var buffer = [UInt8](repeating: 0, count: capacity)
                    let (message, fds) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
                    return (Array(buffer[..<message.count]), fds)
                },
                plainReceive: { capacity in try receiver.receive(maximumSize: capacity).bytes },
                setReceiveTimeout: { try receiver.setReadTimeout($0) },
                setKeepsDescriptors: { receiver.keepsIncomingDescriptors = $0 },
                keepsDescriptors: { receiver.keepsIncomingDescriptors },
                senderDescriptor: sender.descriptor.rawValue, receiverDescriptor: receiver.descriptor.rawValue,
                closeSender: { try sender.close() }, closeReceiver: { try receiver.close() })
        case .datagram:
            let (sender, receiver) = try DatagramSocket.makePair()
            return Link(
                carrier: carrier,
                sendBytes: { bytes, fds in
                    _ = try bytes.withUnsafeBytes { try sender.send($0, descriptors: fds.map(FileDescriptor.init(rawValue:))) }
                },
                receiveBytes: { capacity in
                    var buffer = [UInt8](repeating: 0, count: capacity)
                    let (message, fds) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
                    return (Array(buffer[..<message.count]), fds)
                },
                plainReceive: { capacity in try receiver.receive(maximumSize: capacity).bytes },
                setReceiveTimeout: { try receiver.setReadTimeout($0) },
                setKeepsDescriptors: { receiver.keepsIncomingDescriptors = $0 },
                keepsDescriptors: { receiver.keepsIncomingDescriptors },
                senderDescriptor: sender.descriptor.rawValue, receiverDescriptor: receiver.descriptor.rawValue,
                closeSender: { try sender.close() }, closeReceiver: { try receiver.close() })
        }
    }

    /// Sends `text` with `descriptors`.
    func send(_ text: String, descriptors: [CInt]) throws { try sendBytes(Array(text.utf8), descriptors) }

    /// Receives one message (up to 4 KiB) with its descriptors, as text.
    func receive() throws -> (text: String, descriptors: [ReceivedDescriptor]) {
        let (bytes, descriptors) = try receiveBytes(4096)
        return (String(decoding: bytes, as: UTF8.self), descriptors)
    }
}

/// Turns on Linux SO_PASSCRED behind the library's back, so that credentials
/// take room in the control buffer the library sized for descriptors alone:
/// what happens when another API (or a peer library) enabled it on the socket.
func enablePassCredentialsBehindTheLibrarysBack(_ fd: CInt) throws {
    var on: CInt = 1
    guard setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<CInt>.size)) == 0 else {
        throw POSIXFailure(call: "setsockopt(SO_PASSCRED)", errno: errno)
    }
}

// MARK: - Tests

@Suite("Descriptor passing")
struct DescriptorPassingTests {

    // MARK: Over a pair

    /// The pipe's write end travels; what the receiver writes into it comes out
    /// of the read end here; when the receiver closes its copy, the pipe ends.
    @Test(arguments: Carrier.allCases)
    func pipeWriteEndTravels(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("pipe", descriptors: [pipe.write])
        close(pipe.write)  // the receiver's copy is now the only write end

        let (text, descriptors) = try link.receive()
        #expect(text == "pipe")
        try #require(descriptors.count == 1)
        let received = descriptors[0]
        #expect(received.rawValue >= 0)
        #expect(fileIdentity(ofDescriptor: received.rawValue)?.isSameFile(as: try #require(fileIdentity(ofDescriptor: pipe.read))) == true)

        try writeText(received.rawValue, "through the passed pipe")
        #expect(try readAvailable(pipe.read).map { String(decoding: $0, as: UTF8.self) } == "through the passed pipe")
        received.close()
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// A passed file is the same open file: one offset, moved by both sides.
    @Test func aPassedFileSharesItsOffset() throws {
        try withTemporaryDirectory { directory in
            let link = try Link.make(.stream)
            let file = try openFile(directory.path("shared.txt"), contents: "0123456789")
            defer { close(file) }
            try link.send("file", descriptors: [file])
            let (_, descriptors) = try link.receive()
            let received = try #require(descriptors.first)

            #expect(try readFrom(received.rawValue, count: 4) == Array("0123".utf8))
            #expect(fileOffset(file) == 4, "our offset moved with theirs")
            #expect(try readFrom(file, count: 3) == Array("456".utf8))
            #expect(fileOffset(received.rawValue) == 7)
            #expect(try readFrom(received.rawValue, count: 10) == Array("789".utf8))
            // A write through the passed descriptor lands at the shared offset.
            try writeText(received.rawValue, "AB")
            #expect(try readAt(file, offset: 0, count: 32) == Array("0123456789AB".utf8))
        }
    }

    /// A passed listening socket accepts on the other side, and is a listener
    /// of its own: it goes on listening after the original is closed.
    @Test func aPassedListeningSocketAcceptsOnTheOtherSide() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("handed.sock")
            let listener = try StreamListener.bind(to: address)
            listener.keepSocketFileOnClose()
            let link = try Link.make(.stream)
            try link.send("listener", descriptors: [listener.descriptor.rawValue])
            let (_, descriptors) = try link.receive()
            let received = try #require(descriptors.first)
            try listener.close()

            let client = try StreamSocket.connect(to: address)
            let accepted = accept(received.rawValue, nil, nil)
            try #require(accepted >= 0, "accept on the passed listener: \(String(cString: strerror(errno)))")
            defer { close(accepted) }
            try client.writeAll(Array("via the passed listener".utf8))
            #expect(try readAvailable(accepted).map { String(decoding: $0, as: UTF8.self) } == "via the passed listener")

            // The passed descriptor was the last one listening.
            received.close()
            let error = socketError { try StreamSocket.connect(to: address) }
            #expect(error?.code == .system(.connectionRefused))
        }
    }

    /// Bytes and descriptors travel together; a large write still carries them
    /// on its first bytes, and every byte arrives in order.
    @Test func aLargeWriteCarriesDescriptorsOnItsFirstBytes() throws {
        let (sender, receiver) = try StreamSocket.makePair()
        let pipe = try makePipe()
        defer { close(pipe.read) }
        let payload = patternBytes(count: 1 << 20, seed: 42)
        let writing = BackgroundThread {
            try sender.writeAll(payload, descriptors: [FileDescriptor(rawValue: pipe.write)])
            close(pipe.write)
        }
        var received: [UInt8] = []
        var descriptors: [ReceivedDescriptor] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
        defer { buffer.deallocate() }
        while received.count < payload.count {
            let (message, arrived) = try receiver.receiveWithDescriptors(into: buffer)
            let count = message.count
            if !arrived.isEmpty { #expect(received.isEmpty, "descriptors came after \(received.count) bytes") }
            descriptors += arrived
            if count == 0 { break }
            received += buffer[..<count]
        }
        try writing.join()
        #expect(received == payload)
        try #require(descriptors.count == 1)
        try writeText(descriptors[0].rawValue, "ok")
        #expect(try readAvailable(pipe.read) == Array("ok".utf8))
        descriptors.forEach { $0.close() }
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// A datagram with descriptors to an address: the receiver gets the sender,
    /// the bytes and the descriptors; an empty datagram can carry descriptors.
    @Test func datagramsToAnAddressCarryDescriptors() throws {
        try withTemporaryDirectory { directory in
            let receiver = try DatagramSocket.bind(to: directory.address("dgram.sock"))
            let sender = try DatagramSocket.bind(to: directory.address("sender.sock"))
            let pipe = try makePipe()
            defer { close(pipe.read) }
            try Array("with fd".utf8).withUnsafeBytes {
                _ = try sender.send($0, descriptors: [FileDescriptor(rawValue: pipe.write)], to: try directory.address("dgram.sock"))
            }
            try [UInt8]().withUnsafeBytes {
                _ = try sender.send($0, descriptors: [FileDescriptor(rawValue: pipe.write)], to: try directory.address("dgram.sock"))
            }
            close(pipe.write)

            var buffer = [UInt8](repeating: 0, count: 64)
            let (first, firstFDs) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
            #expect(Array(buffer[..<first.count]) == Array("with fd".utf8))
            #expect(first.sender == (try directory.address("sender.sock")))
            #expect(firstFDs.count == 1)
            let (empty, emptyFDs) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
            #expect(empty.count == 0)
            #expect(!empty.isTruncated)
            #expect(emptyFDs.count == 1)
            try writeText(emptyFDs[0].rawValue, "e")
            try writeText(firstFDs[0].rawValue, "f")
            #expect(try readAvailable(pipe.read) == Array("ef".utf8))
            #expect(try readToEnd(pipe.read, timeout: .milliseconds(100)) == nil, "both copies are still open")
            firstFDs.forEach { $0.close() }
            emptyFDs.forEach { $0.close() }
            #expect(try pipeIsClosedEverywhere(pipe.read))
        }
    }

    /// A stream or seqpacket message needs a byte to carry descriptors.
    @Test func descriptorsNeedAByteOnConnectionSockets() throws {
        let pipe = try makePipe()
        defer { closeAll([pipe.read, pipe.write]) }
        let (stream, _) = try StreamSocket.makePair()
        let streamError = socketError { try stream.writeAll([UInt8](), descriptors: [FileDescriptor(rawValue: pipe.write)]) }
        #expect(streamError?.operation == "sendmsg")
        if case .invalidArgument? = streamError?.code {} else { Issue.record("got \(String(describing: streamError))") }

        let (seqpacket, _) = try SeqpacketSocket.makePair()
        let seqpacketError = socketError { try seqpacket.send([UInt8](), descriptors: [FileDescriptor(rawValue: pipe.write)]) }
        if case .invalidArgument? = seqpacketError?.code {} else { Issue.record("got \(String(describing: seqpacketError))") }
    }

    // MARK: With a real other process

    /// A Python child receives an open file, a pipe's write end and a listening
    /// socket over a connection to our listener, and uses each: it reads the
    /// file, writes what it read into the pipe, and accepts a connection we
    /// make to the listening socket's path.
    @Test func aChildProcessUsesAFileAPipeAndAListeningSocketWeSent() throws {
        try withTemporaryDirectory { directory in
            let control = try StreamListener.bind(to: directory.address("control.sock"))
            let handed = try StreamListener.bind(to: directory.address("handed.sock"))
            let contents = "the file's contents\n"
            let file = try openFile(directory.path("for-the-child.txt"), contents: contents)
            defer { close(file) }
            let pipe = try makePipe()
            defer { close(pipe.read) }

            let child = try PythonPeer(
                "fd-receiver",
                script: """
                    import os, socket, sys
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(sys.argv[1])
                    message, fds, flags, _ = socket.recv_fds(s, 100, 10)
                    print("message=%s count=%d ctrunc=%d" % (message.decode(), len(fds), flags & socket.MSG_CTRUNC), flush=True)
                    file_fd, pipe_fd, listen_fd = fds
                    data = os.read(file_fd, 1000)
                    os.write(pipe_fd, b"child read: " + data)
                    os.close(pipe_fd)
                    listener = socket.socket(fileno=listen_fd)
                    connection, _ = listener.accept()
                    got = connection.recv(100)
                    connection.sendall(b"child accepted: " + got)
                    connection.close()
                    s.sendall(b"done")
                    """,
                arguments: [directory.path("control.sock")], in: directory)
            let (connection, _) = try acceptWithin(control, peer: child)
            try connection.setReadTimeout(.seconds(30))
            try connection.writeAll(Array("three".utf8), descriptors: [FileDescriptor(rawValue: file), FileDescriptor(rawValue: pipe.write), handed.descriptor])
            close(pipe.write)

            // The file: read there, through the pipe, to here.
            #expect(try readTextToEnd(pipe.read, timeout: .seconds(30)) == "child read: " + contents, "\(child.transcript)")
            // The child's read moved the file offset we share.
            #expect(fileOffset(file) == contents.utf8.count)
            // The listening socket: the child accepts our connection.
            let client = try StreamSocket.connect(to: handed.endpoint)
            try client.setReadTimeout(.seconds(30))
            try client.writeAll(Array("hello".utf8))
            try client.shutdown(.write)
            var reply: [UInt8] = []
            while true {
                let chunk = try client.read(upTo: 100)
                if chunk.isEmpty { break }
                reply += chunk
            }
            #expect(String(decoding: reply, as: UTF8.self) == "child accepted: hello")
            #expect(try connection.readExactly(4) == Array("done".utf8))
            try child.expectSuccess()
            #expect(child.output == "message=three count=3 ctrunc=0\n")
        }
    }

    /// The reverse: a Python child sends a file, a pipe's write end and its
    /// listening socket; we read the file, write into the pipe (the child
    /// prints what arrives), and accept the child's own connection on the
    /// listening socket.
    @Test func weUseAFileAPipeAndAListeningSocketAChildSent() throws {
        try withTemporaryDirectory { directory in
            let control = try StreamListener.bind(to: directory.address("control.sock"))
            let child = try PythonPeer(
                "fd-sender",
                script: """
                    import os, socket, sys
                    control_path, workdir = sys.argv[1:]
                    path = os.path.join(workdir, "from-child.txt")
                    with open(path, "w") as f:
                        f.write("written by the child\\n")
                    file_fd = os.open(path, os.O_RDONLY)
                    read_end, write_end = os.pipe()
                    listen_path = os.path.join(workdir, "child-listener.sock")
                    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    listener.bind(listen_path)
                    listener.listen(4)
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(control_path)
                    socket.send_fds(s, [b"fds from the child"], [file_fd, write_end, listener.fileno()])
                    os.close(file_fd)
                    os.close(write_end)
                    listener.close()
                    # Our own listening socket now lives on only in the parent.
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.connect(listen_path)
                    c.sendall(b"hello from the child")
                    c.shutdown(socket.SHUT_WR)
                    data = b""
                    while True:
                        chunk = os.read(read_end, 100)
                        if not chunk:
                            break
                        data += chunk
                    print("pipe=" + data.decode(), flush=True)
                    c.settimeout(20)
                    print("reply=" + c.recv(100).decode(), flush=True)
                    """,
                arguments: [directory.path("control.sock"), directory.path], in: directory)
            let (connection, _) = try acceptWithin(control, peer: child)
            try connection.setReadTimeout(.seconds(30))
            var buffer = [UInt8](repeating: 0, count: 100)
            let (message, descriptors) = try buffer.withUnsafeMutableBytes { try connection.receiveWithDescriptors(into: $0) }
            let count = message.count
            #expect(String(decoding: buffer[..<count], as: UTF8.self) == "fds from the child")
            try #require(descriptors.count == 3, "\(child.transcript)")
            #expect(descriptors.allSatisfy { isCloseOnExec($0.rawValue) })
            let (file, pipeWrite, listening) = (descriptors[0], descriptors[1], descriptors[2])

            #expect(try readFrom(file.rawValue, count: 100) == Array("written by the child\n".utf8))
            try writeText(pipeWrite.rawValue, "written by the parent")
            pipeWrite.close()

            let accepted = accept(listening.rawValue, nil, nil)
            try #require(accepted >= 0, "accept: \(String(cString: strerror(errno)))")
            defer { close(accepted) }
            #expect(try readToEnd(accepted).map { String(decoding: $0, as: UTF8.self) } == "hello from the child")
            try writeText(accepted, "hello child")

            try child.expectSuccess()
            #expect(child.output == "pipe=written by the parent\nreply=hello child\n")
            descriptors.forEach { $0.close() }
        }
    }

    // MARK: Limits

    /// 253 descriptors in one message (Linux SCM_MAX_FD) all arrive, in order,
    /// and each is usable: descriptor i reads file i.
    @Test(arguments: Carrier.allCases)
    func twoHundredFiftyThreeInOneMessage(carrier: Carrier) throws {
        try withTemporaryDirectory { directory in
            let files = try (0..<253).map { try openFile(directory.path("f\($0)"), contents: "file \($0)") }
            defer { closeAll(files) }
            let link = try Link.make(carrier)
            try link.send("many", descriptors: files)
            let (text, descriptors) = try link.receive()
            #expect(text == "many")
            try #require(descriptors.count == 253)
            #expect(Set(descriptors.map(\.rawValue)).count == 253)
            var wrong: [Int] = []
            for (index, descriptor) in descriptors.enumerated() {
                if try readAt(descriptor.rawValue, offset: 0, count: 16) != Array("file \(index)".utf8) { wrong.append(index) }
            }
            #expect(wrong.isEmpty, "descriptors that did not read their file: \(wrong.prefix(10))")
            #expect(descriptors.allSatisfy { isCloseOnExec($0.rawValue) })
        }
    }

    /// 254 fail with `.tooManyDescriptors(count: 254, limit: 253)` before any
    /// system call: invalid descriptor numbers would otherwise fail with EBADF,
    /// and nothing reaches the peer.
    @Test(arguments: Carrier.allCases)
    func twoHundredFiftyFourAreRefusedBeforeAnySystemCall(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        for descriptors in [[CInt](repeating: -1, count: 254), [CInt](repeating: link.senderDescriptor, count: 254)] {
            let error = socketError { try link.send("x", descriptors: descriptors) }
            #expect(error?.code == .tooManyDescriptors(count: 254, limit: 253))
            #expect(error?.operation == "sendmsg")
        }
        #expect(
            socketError { try link.send("y", descriptors: [CInt](repeating: -1, count: 1000)) }?.code
                == .tooManyDescriptors(count: 1000, limit: 253))
        try link.setReceiveTimeout(.milliseconds(100))
        #expect(socketError { try link.plainReceive(16) }?.code == .timedOut, "something was sent")
        try link.send("after", descriptors: [])
        #expect(try link.receive().text == "after")
    }

    @Test func twoHundredFiftyFourToAnAddressAreRefusedToo() throws {
        let receiver = try DatagramSocket.bind(to: uniqueAbstractAddress("254"))
        let sender = try DatagramSocket.unbound()
        let error = socketError {
            try [UInt8(1)].withUnsafeBytes {
                try sender.send($0, descriptors: [FileDescriptor](repeating: FileDescriptor(rawValue: -1), count: 254), to: try receiver.localAddress())
            }
        }
        #expect(error?.code == .tooManyDescriptors(count: 254, limit: 253))
        #expect(error?.description.contains("254 descriptors in one message; the limit is 253") == true)
    }

    // MARK: Ownership

    /// Received descriptors are close-on-exec, though the one sent was not:
    /// FD_CLOEXEC does not travel, MSG_CMSG_CLOEXEC set it on arrival. Also
    /// for descriptors a plain read kept.
    @Test(arguments: Carrier.allCases)
    func receivedDescriptorsAreCloseOnExec(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        let pipe = try makePipe(closeOnExec: false)
        defer { closeAll([pipe.read, pipe.write]) }
        #expect(!isCloseOnExec(pipe.write))
        try link.send("a", descriptors: [pipe.write, pipe.read])
        let (_, direct) = try link.receive()
        #expect(direct.count == 2)
        #expect(direct.allSatisfy { isCloseOnExec($0.rawValue) })

        link.setKeepsDescriptors(true)
        try link.send("b", descriptors: [pipe.write])
        _ = try link.plainReceive(16)
        try link.send("c", descriptors: [])
        let (_, kept) = try link.receive()
        #expect(kept.count == 1)
        #expect(kept.allSatisfy { isCloseOnExec($0.rawValue) })
    }

    /// A received descriptor that nobody takes is closed when it goes away:
    /// the pipe ends once the only other write end is closed, and the number
    /// no longer names the pipe.
    @Test(arguments: Carrier.allCases)
    func aDroppedReceivedDescriptorIsClosed(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        let pipeIdentity = try #require(fileIdentity(ofDescriptor: pipe.read))
        try link.send("d", descriptors: [pipe.write])
        close(pipe.write)

        var number: CInt = -1
        do {
            let (_, descriptors) = try link.receive()
            try #require(descriptors.count == 1)
            withExtendedLifetime(descriptors) {
                number = descriptors[0].rawValue
                #expect(fileIdentity(ofDescriptor: number)?.isSameFile(as: pipeIdentity) == true)
            }
        }
        #expect(try pipeIsClosedEverywhere(pipe.read))
        // Another test may have reused the number since: it names another file then.
        #expect(fileIdentity(ofDescriptor: number)?.isSameFile(as: pipeIdentity) != true)
    }

    /// Ignoring the result of a receive leaks nothing either.
    @Test func ignoredDescriptorsAreClosed() throws {
        let link = try Link.make(.stream)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("ignored", descriptors: Array(repeating: pipe.write, count: 10))
        close(pipe.write)
        _ = try link.receive()
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// take() hands the descriptor over: a second take() gets nothing, and the
    /// ReceivedDescriptor no longer closes it.
    @Test func takeTransfersOwnership() throws {
        let link = try Link.make(.stream)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("t", descriptors: [pipe.write])
        close(pipe.write)

        var taken: CInt = -1
        do {
            let (_, descriptors) = try link.receive()
            let received = descriptors[0]
            let number = received.rawValue
            let descriptor = try #require(received.take())
            taken = descriptor.rawValue
            #expect(taken == number)
            #expect(received.rawValue == -1)
            #expect(received.description == "ReceivedDescriptor(-1)")
            #expect(received.take() == nil)
            received.close()  // does nothing now
        }
        // The ReceivedDescriptor is gone; the taken descriptor is still open.
        #expect(isCloseOnExec(taken))
        try writeText(taken, "still open")
        #expect(try readAvailable(pipe.read) == Array("still open".utf8))
        #expect(try readToEnd(pipe.read, timeout: .milliseconds(100)) == nil, "the taken descriptor was closed")
        close(taken)
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// close() closes at once, once; take() afterwards gets nothing.
    @Test func closeClosesOnce() throws {
        let link = try Link.make(.seqpacket)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("c", descriptors: [pipe.write])
        close(pipe.write)
        let (_, descriptors) = try link.receive()
        let received = descriptors[0]
        #expect(received.description == "ReceivedDescriptor(\(received.rawValue))")
        received.close()
        #expect(received.rawValue == -1)
        #expect(try pipeIsClosedEverywhere(pipe.read))
        #expect(received.take() == nil)
        received.close()
    }

    // MARK: Truncation

    /// Credentials the library did not ask for take room, so 253 descriptors no
    /// longer fit: the kernel sets MSG_CTRUNC. That is `.descriptorsTruncated`,
    /// and every descriptor that did arrive is closed (the pipe ends: no copy
    /// of its write end survives anywhere).
    @Test(arguments: Carrier.allCases)
    func truncatedDescriptorsAreAnErrorAndThoseThatArrivedAreClosed(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        try enablePassCredentialsBehindTheLibrarysBack(link.receiverDescriptor)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("full load", descriptors: Array(repeating: pipe.write, count: 253))
        close(pipe.write)

        let error = socketError { try link.receive() }
        #expect(error?.code == .descriptorsTruncated)
        #expect(error?.operation == (carrier == .stream ? "read" : "recvmsg"))
        #expect(try pipeIsClosedEverywhere(pipe.read))

        // The socket goes on working.
        let second = try makePipe()
        defer { close(second.read) }
        try link.send("next", descriptors: [second.write])
        close(second.write)
        let (text, descriptors) = try link.receive()
        #expect(text == "next")
        #expect(descriptors.count == 1)
    }

    /// A plain read that keeps descriptors fails the same way.
    @Test func aPlainReadReportsTruncatedDescriptorsToo() throws {
        let link = try Link.make(.stream)
        link.setKeepsDescriptors(true)
        try enablePassCredentialsBehindTheLibrarysBack(link.receiverDescriptor)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("x", descriptors: Array(repeating: pipe.write, count: 253))
        close(pipe.write)
        #expect(socketError { try link.plainReceive(16) }?.code == .descriptorsTruncated)
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// When the library itself asked for credentials it makes room for them and
    /// for a full load of descriptors.
    @Test func credentialsAndAFullLoadOfDescriptorsFitTogether() throws {
        let (sender, receiver) = try DatagramSocket.makePair()
        try receiver.setReceivesCredentials(true)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try [UInt8(7)].withUnsafeBytes { _ = try sender.send($0, descriptors: Array(repeating: FileDescriptor(rawValue: pipe.write), count: 253)) }
        close(pipe.write)
        var buffer = [UInt8](repeating: 0, count: 8)
        do {
            let (message, descriptors) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
            #expect(message.credentials == ourCredentials)
            #expect(descriptors.count == 253)
        }
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// The other cause of MSG_CTRUNC: the receiver is out of descriptor numbers
    /// (RLIMIT_NOFILE). The limit is lowered in a child process, where no
    /// other test is disturbed by it.
    @Test func runningOutOfDescriptorsWhileReceivingIsTruncation() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let child = try await runTestInChildProcess(named: "outOfDescriptorsInChildProcess", in: directory)
            #expect(child.reason == .exit)
            #expect(child.status == 0, "child output:\n\(child.output)")
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            #expect(result["error"] == "descriptorsTruncated", "child output:\n\(child.output)")
            #expect(result["pipeClosed"] == "true")
        }
    }

    @Test(.enabled(if: isChildProcess(for: "outOfDescriptorsInChildProcess")))
    func outOfDescriptorsInChildProcess() throws {
        let link = try Link.make(.stream)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("x", descriptors: Array(repeating: pipe.write, count: 10))
        close(pipe.write)

        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else { throw POSIXFailure(call: "getrlimit", errno: errno) }
        // Room for two new descriptors: the limit just past the second free number.
        var free = 0
        var number: CInt = 0
        while free < 2 {
            if fcntl(number, F_GETFD) == -1 { free += 1 }
            number += 1
        }
        var lowered = limit
        lowered.rlim_cur = rlim_t(number)
        guard setrlimit(resource, &lowered) == 0 else { throw POSIXFailure(call: "setrlimit", errno: errno) }
        let outcome = Result { try link.receive() }
        _ = setrlimit(resource, &limit)

        var error = "none"
        switch outcome {
        case .success(let (_, descriptors)): error = "received \(descriptors.count)"
        case .failure(let failure as SocketError): error = failure.code == .descriptorsTruncated ? "descriptorsTruncated" : "\(failure)"
        case .failure(let failure): error = "\(failure)"
        }
        let closed = try pipeIsClosedEverywhere(pipe.read)
        try writeChildResult(["error": error, "pipeClosed": String(closed)])
        #expect(error == "descriptorsTruncated")
        #expect(closed)
    }

    // MARK: Plain reads

    /// A plain read takes the byte that carried a descriptor; the descriptor is
    /// kept and comes with the next receiveWithDescriptors, and works.
    @Test(arguments: Carrier.allCases)
    func aPlainReadKeepsDescriptorsForTheNextReceive(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        #expect(!link.keepsDescriptors(), "keeping is opt-in")
        link.setKeepsDescriptors(true)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("x", descriptors: [pipe.write])
        close(pipe.write)
        #expect(try link.plainReceive(1) == Array("x".utf8))

        try link.send("y", descriptors: [])
        let (text, descriptors) = try link.receive()
        #expect(text == "y")
        try #require(descriptors.count == 1)
        try writeText(descriptors[0].rawValue, "kept")
        #expect(try readAvailable(pipe.read) == Array("kept".utf8))
        descriptors[0].close()
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// Kept descriptors come in arrival order, before those of the message received.
    @Test func keptDescriptorsComeFirstInOrder() throws {
        try withTemporaryDirectory { directory in
            let files = try (0..<3).map { try openFile(directory.path("k\($0)"), contents: "k\($0)") }
            defer { closeAll(files) }
            let (sender, receiver) = try StreamSocket.makePair()
            receiver.keepsIncomingDescriptors = true
            try sender.writeAll(Array("a".utf8), descriptors: [FileDescriptor(rawValue: files[0])])
            try sender.writeAll(Array("b".utf8), descriptors: [FileDescriptor(rawValue: files[1])])
            #expect(try receiver.read(upTo: 1) == Array("a".utf8))
            #expect(try receiver.readExactly(1) == Array("b".utf8))
            try sender.writeAll(Array("c".utf8), descriptors: [FileDescriptor(rawValue: files[2])])
            var buffer = [UInt8](repeating: 0, count: 8)
            let (message, descriptors) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
            let count = message.count
            #expect(Array(buffer[..<count]) == Array("c".utf8))
            #expect(try descriptors.map { try readAt($0.rawValue, offset: 0, count: 8) } == ["k0", "k1", "k2"].map { Array($0.utf8) })
            descriptors.forEach { $0.close() }
        }
    }

    /// At the end of the stream, receiveWithDescriptors still hands over what
    /// plain reads kept.
    @Test func keptDescriptorsComeWithTheEndOfTheStream() throws {
        let link = try Link.make(.stream)
        link.setKeepsDescriptors(true)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("last", descriptors: [pipe.write])
        close(pipe.write)
        try link.closeSender()
        #expect(try link.plainReceive(16) == Array("last".utf8))
        let (text, descriptors) = try link.receive()
        #expect(text.isEmpty)
        try #require(descriptors.count == 1)
        try writeText(descriptors[0].rawValue, "z")
        #expect(try readAvailable(pipe.read) == Array("z".utf8))
        descriptors[0].close()
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// A receiveWithDescriptors that fails (here: times out, nothing more came)
    /// leaves what plain reads kept for the next one: they are not lost.
    @Test(arguments: Carrier.allCases)
    func keptDescriptorsSurviveAFailedReceive(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        link.setKeepsDescriptors(true)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("x", descriptors: [pipe.write])
        close(pipe.write)
        #expect(try link.plainReceive(16) == Array("x".utf8))

        try link.setReceiveTimeout(.milliseconds(50))
        #expect(socketError { try link.receive() }?.code == .timedOut)
        #expect(try readToEnd(pipe.read, timeout: .milliseconds(50)) == nil, "the kept descriptor was closed")

        try link.setReceiveTimeout(nil)
        try link.send("y", descriptors: [])
        let (text, descriptors) = try link.receive()
        #expect(text == "y")
        try #require(descriptors.count == 1)
        try writeText(descriptors[0].rawValue, "still here")
        #expect(try readAvailable(pipe.read) == Array("still here".utf8))
        descriptors[0].close()
        #expect(try pipeIsClosedEverywhere(pipe.read))
    }

    /// Kept descriptors that are never asked for close with their socket:
    /// with `close()`, not only when the object goes away.
    @Test(arguments: Carrier.allCases)
    func keptDescriptorsCloseWithTheSocket(carrier: Carrier) throws {
        let pipe = try makePipe()
        defer { close(pipe.read) }
        let link = try Link.make(carrier)
        link.setKeepsDescriptors(true)
        try link.send("k", descriptors: Array(repeating: pipe.write, count: 5))
        close(pipe.write)
        _ = try link.plainReceive(16)
        #expect(try readToEnd(pipe.read, timeout: .milliseconds(50)) == nil, "kept descriptors were closed early")
        try link.closeReceiver()
        #expect(try pipeIsClosedEverywhere(pipe.read))
        withExtendedLifetime(link) {}
    }

    /// A socket keeps at most one message's worth (253); past that, the extra
    /// are closed and the next receiveWithDescriptors says how many, closing
    /// the kept ones too.
    @Test func keptPastTheLimitAreDiscardedAndReported() throws {
        let link = try Link.make(.seqpacket)
        link.setKeepsDescriptors(true)
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("a", descriptors: Array(repeating: pipe.write, count: 253))
        try link.send("b", descriptors: Array(repeating: pipe.write, count: 2))
        close(pipe.write)
        #expect(try link.plainReceive(16) == Array("a".utf8))
        #expect(try link.plainReceive(16) == Array("b".utf8))
        let error = socketError { try link.receive() }
        #expect(error?.code == .descriptorsDiscarded(count: 2))
        #expect(try pipeIsClosedEverywhere(pipe.read))
        // Reported once; the socket goes on.
        try link.send("c", descriptors: [])
        #expect(try link.receive().text == "c")
    }

    /// With keepsIncomingDescriptors off, a plain read is a recv: the kernel
    /// closes the descriptors riding on what it reads, nothing is kept, and
    /// nothing leaks.
    @Test(arguments: Carrier.allCases)
    func withoutKeepingAPlainReadDropsDescriptors(carrier: Carrier) throws {
        let link = try Link.make(carrier)
        #expect(!link.keepsDescriptors(), "plain reads are plain by default")
        let pipe = try makePipe()
        defer { close(pipe.read) }
        try link.send("x", descriptors: [pipe.write])
        close(pipe.write)
        #expect(try link.plainReceive(16) == Array("x".utf8))
        #expect(try pipeIsClosedEverywhere(pipe.read))

        try link.send("y", descriptors: [])
        let (text, descriptors) = try link.receive()
        #expect(text == "y")
        #expect(descriptors.isEmpty)
        // receiveWithDescriptors does not overrule the setting.
        #expect(!link.keepsDescriptors())
    }

    // MARK: Leaks

    /// 200 rounds of passing 10 descriptors over each socket type, received
    /// and ignored, kept and dropped, taken and closed, or never read: the set
    /// of open descriptors is the same before and after. Counted in a child
    /// process, where no other test opens or closes descriptors.
    @Test func passingLeavesNoDescriptorBehind() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let child = try await runTestInChildProcess(named: "passingRoundsInChildProcess", in: directory)
            #expect(child.reason == .exit)
            #expect(child.status == 0, "child output:\n\(child.output)")
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            #expect(result["passed"] == String(200 * 10 * Carrier.allCases.count))
            let before = try #require(result["before"].flatMap { Int($0) })
            #expect(before > 0)
            #expect(result["after"] == String(before), "extra: \(result["extra"] ?? "")")
            #expect(result["pipeClosed"] == "true")
        }
    }

    @Test(.enabled(if: isChildProcess(for: "passingRoundsInChildProcess")))
    func passingRoundsInChildProcess() throws {
        let pipe = try makePipe()
        defer { close(pipe.read) }
        var passed = 0
        func round(_ number: Int) throws {
            for carrier in Carrier.allCases {
                let link = try Link.make(carrier)
                try link.send("r\(number)", descriptors: Array(repeating: pipe.write, count: 10))
                passed += 10
                switch number % 4 {
                case 0:
                    _ = try link.receive()  // ignored
                case 1:
                    _ = try link.plainReceive(16)  // kept, then the socket goes away
                case 2:
                    for descriptor in try link.receive().descriptors {
                        if let taken = descriptor.take() { try taken.close() }
                    }
                default:
                    break  // never read: still in flight when both sockets close
                }
            }
        }
        // Warm up: anything the runtime opens once is open by now.
        for number in 0..<4 { try round(number) }
        passed = 0
        pause(.milliseconds(50))
        let before = openDescriptors()
        for number in 0..<200 { try round(number) }
        var after = openDescriptors()
        for _ in 0..<3 where after != before {
            pause(.milliseconds(100))
            after = openDescriptors()
        }
        close(pipe.write)
        let closed = try pipeIsClosedEverywhere(pipe.read)
        let extra = after.subtracting(before).sorted().map { "\($0):\(descriptorTarget($0))" }
        try writeChildResult([
            "passed": String(passed), "before": String(before.count), "after": String(after.count),
            "extra": extra.prefix(20).joined(separator: ","), "pipeClosed": String(closed),
        ])
        #expect(extra.isEmpty, "\(extra.count) descriptors more than before: \(extra.prefix(20))")
        #expect(after == before)
        #expect(closed, "a copy of the pipe's write end is still open somewhere")
    }
}
