#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `--allow-gid` admits members of a group through their supplementary
/// groups too, the usual way into a `docker`-style group.
@Suite("Peer identity in the CLI", .timeLimit(.minutes(2)))
struct PeerIdentityCLITests {
    @Test("--allow-gid admits a user whose supplementary group it names, and --show-peer lists the group",
          arguments: ["async", "threads", "handlers"])
    func allowGIDAdmitsASupplementaryGroup(io: String) async throws {
        try #require(getuid() == 0, "the client takes another user's identity")
        let box = try Sandbox()
        defer { box.cleanup() }
        let name = uniqueName("gid")
        // Our own readiness probe is refused: wait for that, not for its session.
        let server = try box.uds(["echo-server", "@\(name)", "--allow-gid", "4242", "--show-peer", "--io", io])
        try await box.waitUntilReady(server, address: "@\(name)", type: .stream)
        try await server.waitForStderr("the probe's refusal") { $0.contains("refused a connection from pid=\(getpid()) ") }
        let client = try await box.run(try box.python("group_member_client.py", [name, "4321", "1234", "4242", "member"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines == ["received member"], "\(client.transcript)")
        try await server.waitForStdout("the member's peer line") { $0.contains("uid=4321 gid=1234 groups=4242") }

        // Without the group, the same user is refused.
        let outsider = try await box.run(try box.python("group_member_client.py", [name, "4321", "1234", "4343", "outsider"]))
        #expect(outsider.stdout.lines != ["received outsider"], "\(outsider.transcript)")
        try await server.waitForStderr("the outsider's refusal") { $0.contains("refused a connection from") && $0.contains("uid=4321") }
    }

    @Test("--mode on an abstract name is refused: it has no file")
    func modeOnAnAbstractNameIsRefused() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.run(try box.uds(["echo-server", "@\(uniqueName("mode"))", "--mode", "600"]))
        #expect(server.termination == .exited(1), "\(server.transcript)")
        #expect(server.stderr.lines.count == 1, "\(server.transcript)")
        #expect(server.stderr.text.contains("an abstract name has no file"), "\(server.transcript)")
    }
}
