import ChildProcesses
import Foundation
import Glibc
import Synchronization
import Testing
import UDSKit

// MARK: - A Python peer in a process of its own

/// A real other process: `python3 -c SCRIPT ARGS...`, its standard output and
/// error collected in files of the test's temporary directory. A missing
/// python3 fails the test with a message; it never skips it.
final class PythonPeer {
    struct Missing: Error, CustomStringConvertible {
        let description: String
    }

    struct Failed: Error, CustomStringConvertible {
        let description: String
    }

    /// The real interpreter, resolved once through `sys.executable`: a pyenv
    /// shim would run Python in a grandchild, with another pid.
    static func interpreter() throws -> String { try interpreterResult.get() }

    private static let interpreterResult: Result<String, Missing> = {
        let searchPath = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        guard
            let python3 = searchPath.split(separator: ":").map({ "\($0)/python3" })
                .first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            return .failure(Missing(description: "python3 is not installed (not found on PATH); install it with `apt-get install python3`"))
        }
        guard let pipe = makeCloseOnExecPipe() else {
            return .failure(Missing(description: "pipe failed: errno \(errno)"))
        }
        let nothing = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(nothing) }
        let process: SpawnedProcess
        do {
            process = try SpawnedProcess(
                executable: python3, arguments: ["-c", "import sys; print(sys.executable)"],
                standardInput: nothing, standardOutput: pipe.write, standardError: nothing)
        } catch {
            close(pipe.read)
            close(pipe.write)
            return .failure(Missing(description: "\(python3) could not be started: \(error)"))
        }
        close(pipe.write)
        let data = FileHandle(fileDescriptor: pipe.read, closeOnDealloc: true).readDataToEndOfFile()
        while process.isRunning { pause(.milliseconds(1)) }
        let resolved = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return .success(FileManager.default.isExecutableFile(atPath: resolved) ? resolved : python3)
    }()

    let name: String
    let process: SpawnedProcess
    private let outputPath: String
    private let errorPath: String

    /// Starts `script` with `arguments`; `name` names its output files and failures.
    init(_ name: String, script: String, arguments: [String] = [], in directory: TemporaryDirectory) throws {
        self.name = name
        outputPath = directory.path("\(name).out")
        errorPath = directory.path("\(name).err")
        for path in [outputPath, errorPath] where !FileManager.default.createFile(atPath: path, contents: nil) {
            throw POSIXFailure(call: "create \(path)", errno: errno)
        }
        let output = open(outputPath, O_WRONLY | O_CLOEXEC)
        let errors = open(errorPath, O_WRONLY | O_CLOEXEC)
        let nothing = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            close(output)
            close(errors)
            close(nothing)
        }
        process = try SpawnedProcess(
            executable: try Self.interpreter(), arguments: ["-c", script] + arguments, directory: directory.path,
            standardInput: nothing, standardOutput: output, standardError: errors)
    }

    deinit {
        if process.isRunning {
            process.signal(SIGKILL)
            while process.isRunning { pause(.milliseconds(1)) }
        }
    }

    var pid: Int32 { process.pid }
    var output: String { (try? readFile(outputPath)) ?? "" }
    var errors: String { (try? readFile(errorPath)) ?? "" }
    var transcript: String { "\(name) (pid \(pid)) stdout:\n\(output)\n\(name) stderr:\n\(errors)" }

    /// Waits for the exit, at most `timeout` (then kills it and fails); returns
    /// the exit status, or 128 + the signal that killed it.
    @discardableResult
    func waitForExit(timeout: Duration = .seconds(30)) throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { pause(.milliseconds(5)) }
        guard let termination = process.termination else {
            process.signal(SIGKILL)
            while process.isRunning { pause(.milliseconds(1)) }
            throw Failed(description: "\(name) did not exit within \(timeout); killed it.\n\(transcript)")
        }
        switch termination {
        case .exited(let status): return status
        case .signaled(let signal): return 128 + signal
        }
    }

    /// Waits for the exit and requires status 0.
    func expectSuccess(timeout: Duration = .seconds(30), sourceLocation: SourceLocation = #_sourceLocation) throws {
        let status = try waitForExit(timeout: timeout)
        #expect(status == 0, "\(transcript)", sourceLocation: sourceLocation)
    }
}

/// Accepts on a background thread, bounded: if nothing connects within
/// `timeout` (the peer died first, say), the listener is closed and the test
/// fails with `peer`'s transcript instead of hanging.
func acceptWithin(
    _ listener: StreamListener, timeout: Duration = .seconds(30), peer: PythonPeer? = nil
) throws -> (connection: StreamSocket, peer: UnixAddress) {
    let accepting = BackgroundThread { try listener.accept() }
    do {
        let accepted = try accepting.join(timeout: timeout)
        return (accepted.connection, accepted.peer.unixAddress ?? .unnamed)
    } catch is BackgroundThread<(connection: StreamSocket, peer: UnixAddress)>.StillRunning {
        try? listener.close()
        throw PythonPeer.Failed(description: "no connection within \(timeout).\n\(peer?.transcript ?? "")")
    }
}

/// Polls `condition` every few milliseconds for at most `timeout`.
func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        pause(.milliseconds(2))
    }
    return true
}

extension PeerCredentials {
    /// Only what SO_PEERCRED reports: to compare with ``ourCredentials``.
    var pidUidGid: PeerCredentials { PeerCredentials(processID: processID, userID: userID, groupID: groupID) }
}

/// This process, as a peer sees it.
var ourCredentials: PeerCredentials {
    PeerCredentials(processID: getpid(), userID: getuid(), groupID: getgid())
}

/// A user and a group this process does not have.
let otherUserID: UInt32 = getuid() == 4321 ? 4322 : 4321
let otherGroupID: UInt32 = getgid() == 1234 ? 1235 : 1234

/// Tests that make a child take another user's identity need root.
func requireRoot(_ why: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    try #require(getuid() == 0, "this test must run as root: \(why)", sourceLocation: sourceLocation)
}

/// The Python prologue that turns the child into another user: drop the
/// supplementary groups, then the group, then the user (root only).
private let becomeOtherUser = """
    import os
    def become(uid, gid):
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    """

// MARK: - Peer credentials

@Suite("Peer credentials and access policies")
struct PeerCredentialsTests {

    @Test func streamPairReportsThisProcessOnBothEnds() throws {
        let (first, second) = try StreamSocket.makePair()
        #expect(try first.peerCredentials().pidUidGid == ourCredentials)
        #expect(try second.peerCredentials().pidUidGid == ourCredentials)
    }

    @Test func seqpacketPairReportsThisProcessOnBothEnds() throws {
        let (first, second) = try SeqpacketSocket.makePair()
        #expect(try first.peerCredentials().pidUidGid == ourCredentials)
        #expect(try second.peerCredentials().pidUidGid == ourCredentials)
    }

    @Test func streamListenerAndClientSeeEachOther() throws {
        try withTemporaryDirectory { directory in
            let listener = try StreamListener.bind(to: directory.address("creds.sock"))
            let client = try StreamSocket.connect(to: listener.endpoint)
            let (server, _) = try listener.accept()
            #expect(try client.peerCredentials().pidUidGid == ourCredentials)
            #expect(try server.peerCredentials().pidUidGid == ourCredentials)
        }
    }

    @Test func seqpacketListenerAndClientSeeEachOther() throws {
        let listener = try SeqpacketListener.bind(to: uniqueAbstractAddress("creds"))
        let client = try SeqpacketSocket.connect(to: listener.endpoint)
        let (server, _) = try listener.accept()
        #expect(try client.peerCredentials().pidUidGid == ourCredentials)
        #expect(try server.peerCredentials().pidUidGid == ourCredentials)
    }

    @Test func peerCredentialsOfAClosedSocketFailWithClosed() throws {
        let (first, _) = try StreamSocket.makePair()
        try first.close()
        let error = socketError { try first.peerCredentials() }
        #expect(error?.code == .closed)
        #expect(error?.operation == "getpeercred")
    }

    @Test func descriptionReadsAsPidUidGid() {
        #expect(PeerCredentials(processID: 12, userID: 34, groupID: 56).description == "pid=12 uid=34 gid=56")
        #expect(PeerCredentials(processID: nil, userID: 0, groupID: 0).description == "pid=? uid=0 gid=0")
    }

    /// The pid is the child's, on both sides: ours as the child sees it with
    /// SO_PEERCRED in Python, and the child's as we see it.
    @Test func aChildProcessIsSeenWithItsOwnPid() throws {
        try withTemporaryDirectory { directory in
            let listener = try StreamListener.bind(to: directory.address("child.sock"))
            let child = try PythonPeer(
                "child-creds",
                script: """
                    import os, socket, struct, sys
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(sys.argv[1])
                    pid, uid, gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                    print("server pid=%d uid=%d gid=%d" % (pid, uid, gid), flush=True)
                    s.sendall(b"%d\\n" % os.getpid())
                    s.recv(1)  # until the test has looked
                    """,
                arguments: [directory.path("child.sock")], in: directory)
            let (connection, _) = try acceptWithin(listener, peer: child)
            try connection.setReadTimeout(.seconds(30))
            var text: [UInt8] = []
            while !text.contains(UInt8(ascii: "\n")) {
                let chunk = try connection.read(upTo: 64)
                if chunk.isEmpty { break }
                text += chunk
            }
            let reported = Int32(String(decoding: text, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))

            let credentials = try connection.peerCredentials()
            #expect(credentials.processID == child.pid, "\(child.transcript)")
            #expect(credentials.processID == reported)
            #expect(credentials.processID != getpid())
            #expect(credentials.userID == getuid())
            #expect(credentials.groupID == getgid())

            try connection.writeAll([1])
            try child.expectSuccess()
            #expect(child.output == "server pid=\(getpid()) uid=\(getuid()) gid=\(getgid())\n")
        }
    }

    /// A child that became another user is reported as that user: the kernel
    /// records who connected, not who started the process.
    @Test func aChildThatIsAnotherUserIsSeenAsThatUser() throws {
        try requireRoot("the child takes uid \(otherUserID) and gid \(otherGroupID)")
        let listener = try StreamListener.bind(to: uniqueAbstractAddress("other-user"))
        let name = try #require(listener.address?.abstractName)
        try withTemporaryDirectory { directory in
            let child = try PythonPeer(
                "other-user",
                script: becomeOtherUser + """
                    import socket, sys
                    become(int(sys.argv[2]), int(sys.argv[3]))
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(b"\\0" + sys.argv[1].encode())
                    s.recv(1)
                    """,
                arguments: [String(decoding: name, as: UTF8.self), String(otherUserID), String(otherGroupID)],
                in: directory)
            let (connection, _) = try acceptWithin(listener, peer: child)
            #expect(
                try connection.peerCredentials().pidUidGid
                    == PeerCredentials(processID: child.pid, userID: otherUserID, groupID: otherGroupID),
                "\(child.transcript)")
            try connection.writeAll([1])
            try child.expectSuccess()
        }
    }

    // MARK: SCM_CREDENTIALS on datagrams

    @Test func datagramsCarryTheSendersCredentialsWhenAsked() throws {
        let receiver = try DatagramSocket.bind(to: uniqueAbstractAddress("passcred"))
        try receiver.setReceivesCredentials(true)
        let sender = try DatagramSocket.unbound()
        try sender.send(Array("one".utf8), to: try receiver.localAddress())
        let (bytes, receipt) = try receiver.receive()
        #expect(bytes == Array("one".utf8))
        #expect(receipt.credentials == ourCredentials)

        // receiveWithDescriptors reports them too.
        try sender.send(Array("two".utf8), to: try receiver.localAddress())
        var buffer = [UInt8](repeating: 0, count: 16)
        let (message, descriptors) = try buffer.withUnsafeMutableBytes { try receiver.receiveWithDescriptors(into: $0) }
        #expect(message.count == 3)
        #expect(descriptors.isEmpty)
        #expect(message.credentials == ourCredentials)
    }

    @Test func datagramPairCarriesCredentialsWhenAsked() throws {
        let (first, second) = try DatagramSocket.makePair()
        try second.setReceivesCredentials(true)
        try first.send(Array("hi".utf8))
        #expect(try second.receive().receipt.credentials == ourCredentials)
        // Only the side that asked gets them.
        try second.send(Array("back".utf8))
        #expect(try first.receive().receipt.credentials == nil)
    }

    @Test func withoutSetReceivesCredentialsThereAreNone() throws {
        let receiver = try DatagramSocket.bind(to: uniqueAbstractAddress("nocred"))
        let sender = try DatagramSocket.unbound()
        try sender.send(Array("plain".utf8), to: try receiver.localAddress())
        let (bytes, receipt) = try receiver.receive()
        #expect(bytes == Array("plain".utf8))
        #expect(receipt.credentials == nil)

        // On, then off again.
        try receiver.setReceivesCredentials(true)
        try sender.send(Array("on".utf8), to: try receiver.localAddress())
        #expect(try receiver.receive().receipt.credentials == ourCredentials)
        try receiver.setReceivesCredentials(false)
        try sender.send(Array("off".utf8), to: try receiver.localAddress())
        let (offBytes, offReceipt) = try receiver.receive()
        #expect(offBytes == Array("off".utf8))
        #expect(offReceipt.credentials == nil)
    }

    @Test func setReceivesCredentialsOnAClosedSocketFails() throws {
        let socket = try DatagramSocket.unbound()
        try socket.close()
        #expect(socketError { try socket.setReceivesCredentials(true) }?.code == .closed)
    }

    /// A datagram from a child process carries the child's pid.
    @Test func aChildsDatagramCarriesTheChildsCredentials() throws {
        let receiver = try DatagramSocket.bind(to: uniqueAbstractAddress("child-dgram"))
        try receiver.setReceivesCredentials(true)
        try receiver.setReadTimeout(.seconds(30))
        let name = try #require(try receiver.localAddress().abstractName)
        try withTemporaryDirectory { directory in
            let child = try PythonPeer(
                "child-dgram",
                script: """
                    import os, socket, sys
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    s.sendto(b"%d" % os.getpid(), b"\\0" + sys.argv[1].encode())
                    """,
                arguments: [String(decoding: name, as: UTF8.self)], in: directory)
            let (bytes, receipt) = try receiver.receive()
            try child.expectSuccess()
            #expect(String(decoding: bytes, as: UTF8.self) == String(child.pid))
            #expect(receipt.credentials == PeerCredentials(processID: child.pid, userID: getuid(), groupID: getgid()))
        }
    }

    /// The kernel checks what a sender claims: a child that is another user
    /// cannot pass itself off as root, and its honest message carries its
    /// real uid and gid.
    @Test func credentialsAreCheckedByTheKernel() throws {
        try requireRoot("the child takes uid \(otherUserID) and gid \(otherGroupID)")
        let receiver = try DatagramSocket.bind(to: uniqueAbstractAddress("forged"))
        try receiver.setReceivesCredentials(true)
        try receiver.setReadTimeout(.seconds(30))
        let name = try #require(try receiver.localAddress().abstractName)
        try withTemporaryDirectory { directory in
            let child = try PythonPeer(
                "forger",
                script: becomeOtherUser + """
                    import socket, struct, sys
                    become(int(sys.argv[2]), int(sys.argv[3]))
                    address = b"\\0" + sys.argv[1].encode()
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    forged = struct.pack("3i", 1, 0, 0)
                    try:
                        s.sendmsg([b"forged"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, forged)], 0, address)
                        print("forgery sent", flush=True)
                    except PermissionError:
                        print("forgery refused", flush=True)
                    s.sendto(b"honest", address)
                    """,
                arguments: [String(decoding: name, as: UTF8.self), String(otherUserID), String(otherGroupID)],
                in: directory)
            let (bytes, receipt) = try receiver.receive()
            try child.expectSuccess()
            #expect(child.output == "forgery refused\n", "\(child.transcript)")
            #expect(bytes == Array("honest".utf8))
            #expect(receipt.credentials == PeerCredentials(processID: child.pid, userID: otherUserID, groupID: otherGroupID))
        }
    }

    // MARK: Access policies

    /// Refusals seen by an `onRefusal` handler.
    final class Refusals: Sendable {
        private let seen = Mutex<[PeerCredentials]>([])
        var all: [PeerCredentials] { seen.withLock { $0 } }
        var count: Int { all.count }
        func record(_ credentials: PeerCredentials) { seen.withLock { $0.append(credentials) } }
        func waitFor(count: Int, timeout: Duration = .seconds(10)) -> Bool {
            eventually(timeout: timeout) { self.count >= count }
        }
    }

    /// Counts calls from any thread.
    final class Counter: Sendable {
        private let value = Atomic<Int>(0)
        /// Adds one and returns the new count.
        func increment() -> Int { value.add(1, ordering: .relaxed).newValue }
        var current: Int { value.load(ordering: .relaxed) }
    }

    /// Set once, from any thread.
    final class Flag: Sendable {
        private let value = Atomic<Bool>(false)
        func set() { value.store(true, ordering: .releasing) }
        var isSet: Bool { value.load(ordering: .acquiring) }
    }

    /// Whether the connection reads the end of the stream or a reset: what a
    /// client of a listener that closed it at once sees.
    private func seesConnectionClosed(_ socket: StreamSocket, sourceLocation: SourceLocation = #_sourceLocation) {
        do throws(SocketError) {
            try socket.setReadTimeout(.seconds(10))
            let bytes = try socket.read(upTo: 16)
            #expect(bytes.isEmpty, "expected the end of the stream, got \(bytes)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.code == .system(.connectionReset), "expected EOF or ECONNRESET, got \(error)", sourceLocation: sourceLocation)
        }
    }

    /// Connects, accepts, and checks that the connection works.
    private func expectAdmitted(_ listener: StreamListener, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let client = try StreamSocket.connect(to: listener.endpoint)
        let (server, _) = try acceptWithin(listener)
        #expect(try server.peerCredentials().pidUidGid == ourCredentials, sourceLocation: sourceLocation)
        try client.writeAll(Array("ping".utf8))
        #expect(try server.readExactly(4) == Array("ping".utf8), sourceLocation: sourceLocation)
        try server.writeAll(Array("pong".utf8))
        #expect(try client.readExactly(4) == Array("pong".utf8), sourceLocation: sourceLocation)
    }

    /// Connects while a policy refuses everyone: the client sees the connection
    /// closed, the handler is told who it was, and accept() goes on waiting
    /// (until the listener is closed).
    private func expectRefused(
        _ bind: (AccessPolicy) throws -> StreamListener,
        policy: (@escaping @Sendable (PeerCredentials) -> Void) -> AccessPolicy,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let refusals = Refusals()
        let listener = try bind(policy { refusals.record($0) })
        let returned = Flag()
        let accepting = BackgroundThread {
            defer { returned.set() }
            _ = try listener.accept()
        }
        let client = try StreamSocket.connect(to: listener.endpoint)
        #expect(refusals.waitFor(count: 1), "onRefusal was not called", sourceLocation: sourceLocation)
        seesConnectionClosed(client, sourceLocation: sourceLocation)
        #expect(refusals.all.map(\.pidUidGid) == [ourCredentials], sourceLocation: sourceLocation)
        pause(.milliseconds(50))
        #expect(!returned.isSet, "accept() returned a refused peer", sourceLocation: sourceLocation)
        try listener.close()
        let error = failure(of: { try accepting.join() })
        #expect(error?.code == .closed, sourceLocation: sourceLocation)
    }

    @Test func usersPolicyAdmitsOurUser() throws {
        let refusals = Refusals()
        let listener = try StreamListener.bind(
            to: uniqueAbstractAddress("users-ok"), admitting: .users([getuid()]) { refusals.record($0) })
        try expectAdmitted(listener)
        #expect(refusals.count == 0)
    }

    @Test func usersPolicyRefusesAnotherUser() throws {
        let address = try uniqueAbstractAddress("users-no")
        try expectRefused({ try StreamListener.bind(to: address, admitting: $0) }) { handler in
            .users([otherUserID], onRefusal: handler)
        }
    }

    @Test func groupsPolicyAdmitsOurGroupAndRefusesAnother() throws {
        let refusals = Refusals()
        let admitting = try StreamListener.bind(
            to: uniqueAbstractAddress("groups-ok"), admitting: .groups([getgid()]) { refusals.record($0) })
        try expectAdmitted(admitting)
        #expect(refusals.count == 0)

        let address = try uniqueAbstractAddress("groups-no")
        try expectRefused({ try StreamListener.bind(to: address, admitting: $0) }) { handler in
            .groups([otherGroupID], onRefusal: handler)
        }
    }

    /// With both lists, either a matching user or a matching group admits.
    @Test func usersOrGroupsEitherMatchAdmits() throws {
        try expectAdmitted(StreamListener.bind(
            to: uniqueAbstractAddress("either-gid"), admitting: .users([otherUserID], groups: [getgid()])))
        try expectAdmitted(StreamListener.bind(
            to: uniqueAbstractAddress("either-uid"), admitting: .users([getuid()], groups: [otherGroupID])))
        let address = try uniqueAbstractAddress("neither")
        try expectRefused({ try StreamListener.bind(to: address, admitting: $0) }) { handler in
            .users([otherUserID], groups: [otherGroupID], onRefusal: handler)
        }
    }

    /// A predicate sees the peer's credentials as the kernel reports them.
    @Test func customPredicateSeesTheCredentials() throws {
        let seen = Refusals()
        let listener = try StreamListener.bind(
            to: uniqueAbstractAddress("predicate"),
            admitting: AccessPolicy { credentials in
                seen.record(credentials)
                return credentials.processID == getpid()
            })
        try expectAdmitted(listener)
        #expect(seen.all.map(\.pidUidGid) == [ourCredentials])

        let address = try uniqueAbstractAddress("predicate-no")
        try expectRefused({ try StreamListener.bind(to: address, admitting: $0) }) { handler in
            AccessPolicy({ $0.processID != getpid() }, onRefusal: handler)
        }
    }

    /// A refused peer is closed and reported, and accept() keeps waiting for the
    /// next peer the policy admits: it returns the second connection, not the first.
    @Test func refusedPeerIsClosedAndAcceptWaitsForTheNextAdmittedOne() throws {
        try withTemporaryDirectory { directory in
            let decisions = Counter()
            let refusals = Refusals()
            // Refuses the first peer it is asked about, admits the rest.
            let policy = AccessPolicy({ _ in decisions.increment() > 1 }, onRefusal: { refusals.record($0) })
            let listener = try StreamListener.bind(to: directory.address("gate.sock"), admitting: policy)
            let returned = Flag()
            let accepting = BackgroundThread {
                defer { returned.set() }
                let (connection, peer) = try listener.accept()
                return (connection, peer)
            }

            let firstAddress = try directory.address("first.sock")
            let first = try StreamSocket.connect(to: listener.endpoint, from: firstAddress)
            #expect(refusals.waitFor(count: 1), "the first peer was not refused")
            #expect(refusals.all.map(\.pidUidGid) == [ourCredentials])
            seesConnectionClosed(first)
            pause(.milliseconds(50))
            #expect(!returned.isSet, "accept() returned after refusing the only peer")

            let secondAddress = try directory.address("second.sock")
            let second = try StreamSocket.connect(to: listener.endpoint, from: secondAddress)
            let (connection, peer) = try accepting.join()
            #expect(peer == .unix(secondAddress))
            #expect(try connection.peerAddress() == secondAddress)
            try second.writeAll(Array("second".utf8))
            #expect(try connection.readExactly(6) == Array("second".utf8))
            #expect(decisions.current == 2)
            #expect(refusals.count == 1)
        }
    }

    /// Several refused peers queued at once are all closed before accept()
    /// returns the admitted one behind them.
    @Test func queuedRefusedPeersAreAllClosed() throws {
        let decisions = Counter()
        let refusals = Refusals()
        let listener = try StreamListener.bind(
            to: uniqueAbstractAddress("queue"),
            admitting: AccessPolicy({ _ in decisions.increment() > 5 }) { refusals.record($0) })
        let refused = try (0..<5).map { _ in try StreamSocket.connect(to: listener.endpoint) }
        let admitted = try StreamSocket.connect(to: listener.endpoint)
        let (connection, _) = try acceptWithin(listener)
        #expect(refusals.all.map(\.pidUidGid) == Array(repeating: ourCredentials, count: 5))
        for client in refused { seesConnectionClosed(client) }
        try admitted.writeAll([42])
        #expect(try connection.readExactly(1) == [42])
    }

    @Test func seqpacketListenerAppliesItsPolicy() throws {
        let refusals = Refusals()
        let decisions = Counter()
        let listener = try SeqpacketListener.bind(
            to: uniqueAbstractAddress("seq-policy"),
            admitting: AccessPolicy({ _ in decisions.increment() > 1 }) { refusals.record($0) })
        let first = try SeqpacketSocket.connect(to: listener.endpoint)
        let second = try SeqpacketSocket.connect(to: listener.endpoint)
        let (connection, _) = try listener.accept()
        #expect(refusals.all.map(\.pidUidGid) == [ourCredentials])
        try first.setReadTimeout(.seconds(10))
        let (bytes, receipt) = try first.receive()
        #expect(bytes.isEmpty && !receipt.isTruncated, "the refused seqpacket peer should see the end")
        try second.send(Array("admitted".utf8))
        #expect(try connection.receive().bytes == Array("admitted".utf8))
    }

    /// A child running as another user is refused by `.users([our uid])`; the
    /// handler hears its pid, uid and gid, and we are admitted afterwards.
    @Test func aChildOfAnotherUserIsRefusedAndWeAreAdmittedAfterIt() throws {
        try requireRoot("the child takes uid \(otherUserID) and gid \(otherGroupID)")
        let refusals = Refusals()
        let listener = try StreamListener.bind(
            to: uniqueAbstractAddress("child-refused"), admitting: .users([getuid()]) { refusals.record($0) })
        let name = try #require(listener.address?.abstractName)
        let accepting = BackgroundThread { try listener.accept() }
        try withTemporaryDirectory { directory in
            let child = try PythonPeer(
                "refused-child",
                script: becomeOtherUser + """
                    import socket, sys
                    become(int(sys.argv[2]), int(sys.argv[3]))
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(b"\\0" + sys.argv[1].encode())
                    s.settimeout(20)
                    try:
                        data = s.recv(16)
                        print("eof" if data == b"" else "data %r" % data, flush=True)
                    except ConnectionResetError:
                        print("reset", flush=True)
                    """,
                arguments: [String(decoding: name, as: UTF8.self), String(otherUserID), String(otherGroupID)],
                in: directory)
            try child.expectSuccess()
            #expect(["eof\n", "reset\n"].contains(child.output), "\(child.transcript)")
            #expect(refusals.waitFor(count: 1))
            #expect(refusals.all.map(\.pidUidGid) == [PeerCredentials(processID: child.pid, userID: otherUserID, groupID: otherGroupID)])
        }
        let client = try StreamSocket.connect(to: listener.endpoint)
        let (connection, _) = try accepting.join()
        #expect(try connection.peerCredentials().pidUidGid == ourCredentials)
        try client.writeAll([7])
        #expect(try connection.readExactly(1) == [7])
    }

    @Test func everyoneIsTheDefault() throws {
        try expectAdmitted(StreamListener.bind(to: uniqueAbstractAddress("everyone")))
        try expectAdmitted(StreamListener.bind(to: uniqueAbstractAddress("everyone"), admitting: .everyone))
    }
}
