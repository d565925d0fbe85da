import Foundation
import Glibc
import Testing
@testable import UDSKit

/// What the kernel says of a peer beyond uid, gid and pid: supplementary
/// groups, a pidfd that names the very process, the security label.
@Suite("Peer identity: groups, pidfd, label")
struct PeerIdentityTests {
    /// A child in a supplementary group only (the usual way into a
    /// `docker`-style group) is reported with it, and a group policy admits it.
    @Test func aChildInASupplementaryGroupIsSeenAndAdmittedByIt() throws {
        try requireRoot("the child takes another user's identity with a supplementary group")
        let supplementary: UInt32 = 4242
        let listener = try StreamListener.bind(to: uniqueAbstractAddress("groups"), admitting: .groups([supplementary]))
        defer { try? listener.close() }
        let name = try #require(listener.address?.abstractName)
        try withTemporaryDirectory { directory in
            let child = try PythonPeer(
                "supplementary",
                script: """
                    import os, socket, sys
                    os.setgroups([int(sys.argv[4])])
                    os.setgid(int(sys.argv[3]))
                    os.setuid(int(sys.argv[2]))
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(b"\\0" + sys.argv[1].encode())
                    s.recv(1)
                    """,
                arguments: [
                    String(decoding: name, as: UTF8.self), String(otherUserID), String(otherGroupID), String(supplementary),
                ],
                in: directory)
            let (connection, _) = try acceptWithin(listener, peer: child)
            let credentials = try connection.peerCredentials()
            #expect(credentials.userID == otherUserID && credentials.groupID == otherGroupID, "\(child.transcript)")
            #expect(credentials.supplementaryGroups == [supplementary], "\(credentials)")
            #expect(credentials.isMember(of: supplementary))
            #expect(credentials.description.contains("groups=\(supplementary)"))
            try connection.writeAll([1])
            try child.expectSuccess()
        }
    }

    /// Our own supplementary groups, as getgroups(2) lists them.
    @Test func aPairReportsOurSupplementaryGroups() throws {
        let count = getgroups(0, nil)
        var groups = [gid_t](repeating: 0, count: Int(count))
        _ = getgroups(count, &groups)
        let (first, second) = try StreamSocket.makePair()
        let reported = try #require(try first.peerCredentials().supplementaryGroups)
        #expect(Set(reported) == Set(groups.map { UInt32($0) }))
        withExtendedLifetime(second) {}
    }

    /// The pidfd names this process while it runs; read through it, the
    /// command name is ours.
    @Test func thePeerProcessOfAPairIsThisProcess() throws {
        let (first, second) = try StreamSocket.makePair()
        defer {
            try? first.close()
            try? second.close()
        }
        let process = try first.peerProcess()
        #expect(process.processID == getpid())
        #expect(process.isRunning)
        let ours = try String(contentsOfFile: "/proc/self/comm", encoding: .utf8).trimmingCharacters(in: .newlines)
        #expect(process.commandName == ours)
    }

    /// Once the peer has exited, its pidfd says so, and no command name is
    /// read: a later process that took the pid would otherwise be named.
    @Test func thePidfdOfAnExitedPeerNamesNoOneElse() throws {
        let listener = try StreamListener.bind(to: uniqueAbstractAddress("pidfd"))
        defer { try? listener.close() }
        let name = try #require(listener.address?.abstractName)
        try withTemporaryDirectory { directory in
            let child = try PythonPeer(
                "exits",
                script: """
                    import socket, sys
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(b"\\0" + sys.argv[1].encode())
                    s.recv(1)
                    """,
                arguments: [String(decoding: name, as: UTF8.self)], in: directory)
            let (connection, _) = try acceptWithin(listener, peer: child)
            let process = try connection.peerProcess()
            #expect(process.processID == child.pid)
            #expect(process.isRunning)
            #expect(process.commandName != nil)
            try connection.writeAll([1])
            try child.expectSuccess()
            #expect(!process.isRunning)
            #expect(process.commandName == nil)
        }
    }

    /// Without a security module there is no label, and that is no error.
    @Test func aMissingSecurityLabelIsNil() throws {
        let (first, second) = try StreamSocket.makePair()
        let credentials = try first.peerCredentials()
        let hasModule = FileManager.default.fileExists(atPath: "/sys/kernel/security/lsm")
            && ((try? String(contentsOfFile: "/sys/kernel/security/lsm", encoding: .utf8)) ?? "")
                .split(separator: ",").contains { ["selinux", "apparmor", "smack"].contains($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        if !hasModule { #expect(credentials.securityLabel == nil) }
        withExtendedLifetime(second) {}
    }
}
