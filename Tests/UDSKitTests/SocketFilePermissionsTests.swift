import Foundation
import Glibc
import Synchronization
import SystemPackage
import Testing
import UDSKit

/// Owner, group and mode of a socket file as `lstat` shows them.
struct SocketFileState: Hashable, Sendable, CustomStringConvertible {
    let userID: UInt32
    let groupID: UInt32
    let permissions: UInt32

    init?(atPath path: String) {
        var status = stat()
        guard lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK else { return nil }
        userID = status.st_uid
        groupID = status.st_gid
        permissions = UInt32(status.st_mode & 0o7777)
    }

    init(userID: UInt32, groupID: UInt32, permissions: UInt32) {
        self.userID = userID
        self.groupID = groupID
        self.permissions = permissions
    }

    var description: String { "uid=\(userID) gid=\(groupID) mode=0\(String(permissions, radix: 8))" }
}

@Suite("Socket file owner, group and mode")
struct SocketFilePermissionsTests {
    /// The kinds of socket that bind a path.
    enum Binder: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case streamListener, seqpacketListener, datagram, streamClient
        var testDescription: String { rawValue }

        /// Binds `path` with `options` and returns something to close.
        func bind(_ path: String, _ options: BindOptions) throws -> () throws -> Void {
            let address = try UnixAddress(path: path)
            switch self {
            case .streamListener:
                let listener = try StreamListener.bind(to: address, options: options)
                return { try listener.close() }
            case .seqpacketListener:
                let listener = try SeqpacketListener.bind(to: address, options: options)
                return { try listener.close() }
            case .datagram:
                let socket = try DatagramSocket.bind(to: address, options: options)
                return { try socket.close() }
            case .streamClient:
                // A client binds its own address before connecting.
                let server = try StreamListener.bind(to: uniqueAbstractAddress("perm-server"))
                let client = try StreamSocket.connect(to: server.endpoint, from: address, bindOptions: options)
                return {
                    try client.close()
                    try server.close()
                }
            }
        }
    }

    @Test(arguments: Binder.allCases)
    func groupAndModeAreSetAtBind(binder: Binder) throws {
        try requireRoot("root may give the socket file any group (\(otherGroupID))")
        try withTemporaryDirectory { directory in
            let path = directory.path("group.sock")
            let close = try binder.bind(path, BindOptions(permissions: [.ownerReadWrite, .groupReadWrite], group: otherGroupID))
            #expect(SocketFileState(atPath: path) == SocketFileState(userID: getuid(), groupID: otherGroupID, permissions: 0o660))
            try close()
            #expect(!fileExists(atPath: path))
        }
    }

    @Test(arguments: Binder.allCases)
    func ownerIsSetAtBindWithMode0660ByDefault(binder: Binder) throws {
        try requireRoot("only root may give a file to another user (\(otherUserID))")
        try withTemporaryDirectory { directory in
            let path = directory.path("owner.sock")
            let close = try binder.bind(path, BindOptions(owner: otherUserID))
            #expect(SocketFileState(atPath: path) == SocketFileState(userID: otherUserID, groupID: getgid(), permissions: 0o660))
            try close()
            // Closing still removes the file, though it is now someone else's.
            #expect(!fileExists(atPath: path))
        }
    }

    @Test func ownerGroupAndModeTogether() throws {
        try requireRoot("the file goes to uid \(otherUserID), gid \(otherGroupID)")
        try withTemporaryDirectory { directory in
            for mode: UInt16 in [0o600, 0o660, 0o666, 0o640] {
                let path = directory.path("all-\(String(mode, radix: 8)).sock")
                let listener = try StreamListener.bind(
                    to: UnixAddress(path: path),
                    options: BindOptions(permissions: FilePermissions(rawValue: mode_t(mode)), owner: otherUserID, group: otherGroupID))
                #expect(
                    SocketFileState(atPath: path)
                        == SocketFileState(userID: otherUserID, groupID: otherGroupID, permissions: UInt32(mode)))
                try listener.close()
            }
        }
    }

    /// Our own group needs no privilege; without owner or group the mode is
    /// exactly what was asked, whatever the umask.
    @Test func ownGroupAndPlainModes() throws {
        try withTemporaryDirectory { directory in
            let ownGroup = directory.path("own-group.sock")
            let first = try StreamListener.bind(to: UnixAddress(path: ownGroup), options: BindOptions(group: getgid()))
            #expect(SocketFileState(atPath: ownGroup) == SocketFileState(userID: getuid(), groupID: getgid(), permissions: 0o660))
            try first.close()

            let plain = directory.path("plain.sock")
            let second = try StreamListener.bind(to: UnixAddress(path: plain), options: BindOptions(permissions: [.ownerReadWrite]))
            #expect(SocketFileState(atPath: plain) == SocketFileState(userID: getuid(), groupID: getgid(), permissions: 0o600))
            try second.close()
        }
    }

    /// Mode, owner and group only apply to paths: on an abstract name they
    /// would be silently ignored, so bind refuses them and says what to use.
    @Test(arguments: [
        BindOptions(permissions: [.ownerReadWrite]), BindOptions(owner: otherUserID), BindOptions(group: otherGroupID),
    ])
    func abstractNamesRefuseModeOwnerAndGroup(options: BindOptions) throws {
        let error = socketError { try StreamListener.bind(to: uniqueAbstractAddress("perm"), options: options) }
        guard case .invalidArgument(let why)? = error?.code else {
            Issue.record("expected .invalidArgument, got \(String(describing: error))")
            return
        }
        #expect(why.contains("access policy"))
        #expect(error?.operation == "bind")
        // Without them, the name binds as usual.
        let listener = try StreamListener.bind(to: uniqueAbstractAddress("perm"))
        try listener.close()
    }

    /// What the file's mode, owner and group mean in practice: a child process
    /// that is the new owner, or in the new group, may connect; anyone else
    /// is refused with EACCES.
    @Test func theFileModeDecidesWhoMayConnect() throws {
        try requireRoot("the children take other users' identities")
        try withTemporaryDirectory { directory in
            // Let the children reach the socket file in our directory.
            chmod(directory.path, 0o711)
            let ownerOnly = directory.path("owner-only.sock")
            let groupShared = directory.path("group.sock")
            let first = try StreamListener.bind(
                to: UnixAddress(path: ownerOnly), options: BindOptions(permissions: [.ownerReadWrite], owner: otherUserID))
            let second = try StreamListener.bind(
                to: UnixAddress(path: groupShared), options: BindOptions(permissions: [.ownerReadWrite, .groupReadWrite], group: otherGroupID))
            defer {
                try? first.close()
                try? second.close()
            }
            let stranger = otherUserID + 1
            let strangerGroup = otherGroupID + 1
            let cases: [(path: String, uid: UInt32, gid: UInt32, expected: String)] = [
                (ownerOnly, otherUserID, strangerGroup, "connected"),
                (ownerOnly, stranger, otherGroupID, "EACCES"),
                (groupShared, stranger, otherGroupID, "connected"),
                (groupShared, stranger, strangerGroup, "EACCES"),
            ]
            for (index, check) in cases.enumerated() {
                let child = try PythonPeer(
                    "connect-\(index)",
                    script: """
                        import errno, os, socket, sys
                        path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
                        os.setgroups([])
                        os.setgid(gid)
                        os.setuid(uid)
                        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        try:
                            s.connect(path)
                            print("connected")
                        except OSError as e:
                            print(errno.errorcode.get(e.errno, str(e.errno)))
                        """,
                    arguments: [check.path, String(check.uid), String(check.gid)], in: directory)
                try child.expectSuccess()
                #expect(
                    child.output == check.expected + "\n",
                    "uid \(check.uid) gid \(check.gid) connecting to \(check.path): \(child.transcript)")
            }
        }
    }

    // MARK: No window with other permissions

    /// One at a time: each watcher spins a core while it looks.
    @Suite("No window with other permissions", .serialized)
    struct NoWindow {

        /// What a watcher saw of one path while it was bound over and over.
        final class Observations: Sendable {
            private let states = Mutex<[SocketFileState: Int]>([:])
            private let stopped = Atomic<Bool>(false)
            private let looks = Atomic<Int>(0)

            var seen: [SocketFileState: Int] { states.withLock { $0 } }
            var lookCount: Int { looks.load(ordering: .acquiring) }
            func stop() { stopped.store(true, ordering: .releasing) }

            /// Polls `path` with lstat in a tight loop until stopped.
            func watch(_ path: String) {
                var local: [SocketFileState: Int] = [:]
                while !stopped.load(ordering: .acquiring) {
                    if let state = SocketFileState(atPath: path) { local[state, default: 0] += 1 }
                    looks.add(1, ordering: .releasing)
                }
                states.withLock { $0 = local }
            }

            /// Waits until the watcher has looked twice more (so at least once
            /// wholly after this call), at most a few seconds.
            func waitForTwoMoreLooks() {
                let start = lookCount
                _ = eventually(timeout: .seconds(5)) { self.lookCount >= start + 2 }
            }
        }

        /// Binds `rounds` times while another thread polls the path, and returns
        /// every owner/group/mode the watcher saw.
        private func watchBinds(
            _ options: BindOptions, rounds: Int, binder: SocketFilePermissionsTests.Binder = .streamListener
        ) throws -> (states: [SocketFileState: Int], looks: Int) {
            try withTemporaryDirectory { directory in
                let path = directory.path("watched.sock")
                let observations = Observations()
                let watcher = BackgroundThread { observations.watch(path) }
                defer {
                    observations.stop()
                    _ = try? watcher.join()
                }
                for round in 0..<rounds {
                    let close = try binder.bind(path, options)
                    // Every tenth file stays until the watcher has surely seen it
                    // finished; the others go at once, to catch it mid-bind.
                    if round % 10 == 0 { observations.waitForTwoMoreLooks() }
                    try close()
                }
                observations.stop()
                try watcher.join()
                return (observations.seen, observations.lookCount)
            }
        }

        /// A mode with group or other bits never shows while the file is still
        /// ours alone, and no bit that was not asked for ever shows.
        private func expectNoWindow(
            _ result: (states: [SocketFileState: Int], looks: Int), requested: UInt32, owner: UInt32, group: UInt32,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            let final = SocketFileState(userID: owner, groupID: group, permissions: requested)
            let described = result.states.map { "\($0.key) ×\($0.value)" }.sorted().joined(separator: ", ")
            #expect(result.looks > 0, sourceLocation: sourceLocation)
            #expect(result.states[final] != nil, "the watcher never saw the finished file; saw: \(described)", sourceLocation: sourceLocation)
            for state in result.states.keys {
                #expect(
                    state.permissions & ~requested == 0,
                    "mode bits that were not asked for: \(state) (asked 0\(String(requested, radix: 8))); saw: \(described)",
                    sourceLocation: sourceLocation)
                if state.permissions & 0o077 != 0 {
                    #expect(
                        state.userID == owner && state.groupID == group,
                        "group/other access before the file was handed over: \(state); saw: \(described)",
                        sourceLocation: sourceLocation)
                }
            }
        }

        @Test(arguments: SocketFilePermissionsTests.Binder.allCases)
        func noWindowWhenTheGroupIsHandedOver(binder: SocketFilePermissionsTests.Binder) throws {
            try requireRoot("root may give the socket file any group (\(otherGroupID))")
            let result = try watchBinds(BindOptions(permissions: [.ownerReadWrite, .groupReadWrite], group: otherGroupID), rounds: 200, binder: binder)
            expectNoWindow(result, requested: 0o660, owner: getuid(), group: otherGroupID)
        }

        @Test func noWindowWhenTheOwnerIsHandedOver() throws {
            try requireRoot("only root may give a file to another user (\(otherUserID))")
            let result = try watchBinds(
                BindOptions(permissions: [.ownerReadWrite, .groupReadWrite, .otherReadWrite], owner: otherUserID, group: otherGroupID), rounds: 200)
            expectNoWindow(result, requested: 0o666, owner: otherUserID, group: otherGroupID)
        }

        /// Without a hand-over the mode is set before bind: the umask's 0755 or
        /// 0777 never shows, not even for an instant.
        @Test func noWindowForAPlainMode() throws {
            let result = try watchBinds(BindOptions(permissions: [.ownerReadWrite]), rounds: 200)
            expectNoWindow(result, requested: 0o600, owner: getuid(), group: getgid())
        }
    }

    // MARK: Failure leaves nothing behind

    /// A bind whose hand-over fails (an unprivileged process may not give the
    /// file away) fails naming chown, and leaves no socket file. Run in a child
    /// process that gives up root, so this process keeps its privileges.
    @Test func aFailedHandOverLeavesNoFile() async throws {
        try requireRoot("the child gives up root to be refused")
        try await withTemporaryDirectoryAsync { directory in
            chmod(directory.path, 0o777)
            let child = try await runTestInChildProcess(named: "handOverFailsInChildProcess", in: directory)
            #expect(child.reason == .exit)
            #expect(child.status == 0, "child output:\n\(child.output)")
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            #expect(result["uid"] == String(otherUserID))
            #expect(result["ownerError"] == "chown: EPERM", "child output:\n\(child.output)")
            #expect(result["groupError"] == "chown: EPERM", "child output:\n\(child.output)")
            #expect(result["leftBehind"] == "", "child output:\n\(child.output)")
        }
    }

    @Test(.enabled(if: isChildProcess(for: "handOverFailsInChildProcess")))
    func handOverFailsInChildProcess() throws {
        let resultPath = try #require(ProcessInfo.processInfo.environment[childResultVariable])
        let directory = (resultPath as NSString).deletingLastPathComponent
        guard setgroups(0, nil) == 0, setgid(otherGroupID) == 0, setuid(otherUserID) == 0 else {
            throw POSIXFailure(call: "setuid", errno: errno)
        }
        func attempt(_ name: String, _ options: BindOptions) -> String {
            do throws(SocketError) {
                let listener = try StreamListener.bind(to: UnixAddress(path: directory + "/" + name), options: options)
                try listener.close()
                return "bound"
            } catch {
                return "\(error.operation): \(error.errno.map { $0 == .notPermitted ? "EPERM" : "\($0)" } ?? "\(error.code)")"
            }
        }
        let ownerError = attempt("to-root.sock", BindOptions(owner: 0))
        let groupError = attempt("to-group.sock", BindOptions(group: 0))
        let leftBehind = ["to-root.sock", "to-group.sock"].filter { fileExists(atPath: directory + "/" + $0) }
        try writeChildResult([
            "uid": String(getuid()), "ownerError": ownerError, "groupError": groupError,
            "leftBehind": leftBehind.joined(separator: ","),
        ])
        #expect(ownerError == "chown: EPERM")
        #expect(groupError == "chown: EPERM")
        #expect(leftBehind.isEmpty)
    }
}
