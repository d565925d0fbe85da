import Foundation
import Testing

/// `uds ls --all` (every socket, as ss -xp shows them), `--state` and `-r`.
@Suite("uds ls --all, --state, -r", .timeLimit(.minutes(2)))
struct ListAllCLITests {

    private func rows(_ child: Child) throws -> [[String: Any]] {
        try JSONSerialization.jsonObject(with: Data(child.stdout.bytes)) as? [[String: Any]] ?? []
    }

    @Test("--all shows unnamed and connected sockets with their queues, peers and processes")
    func allSockets() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let pair = try box.python("connected_pair.py", ["srv.sock"])
        try await pair.waitForStdout("ready") { $0.hasPrefix("ready ") && $0.hasSuffix("\n") }
        let inodes = pair.stdout.text.split(separator: " ").dropFirst().compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        try #require(inodes.count == 3, "\(pair.transcript)")
        let (listener, client, accepted) = (inodes[0], inodes[1], inodes[2])

        let list = try await box.runUDS(["ls", "--all", "--json"])
        #expect(list.termination == .exited(0), "\(list.transcript)")
        let all = try rows(list)
        func row(_ inode: Int) -> [String: Any]? { all.first { $0["inode"] as? Int == inode } }
        let pids: ([String: Any]?) -> [Int] = { ($0?["processes"] as? [[String: Any]] ?? []).compactMap { $0["pid"] as? Int } }

        #expect(row(listener)?["state"] as? String == "listening")
        #expect(row(listener)?["address"] as? String == "srv.sock")
        #expect(pids(row(listener)) == [Int(pair.pid)])
        // The accepted socket holds the 5 unread bytes; the client is its peer.
        #expect(row(accepted)?["state"] as? String == "connected")
        #expect(row(accepted)?["receiveQueue"] as? Int == 5, "\(list.stdout.text)")
        #expect(row(accepted)?["peer"] as? Int == client)
        #expect(row(client)?["peer"] as? Int == accepted)
        #expect(row(client)?["addressKind"] as? String == "unnamed")
        #expect(pids(row(client)) == [Int(pair.pid)])
        // Every field is there, null when unknown.
        let keys = ["type", "state", "address", "addressKind", "inode", "peer", "peerAddress",
                    "receiveQueue", "sendQueue", "fileDevice", "fileInode", "processes"]
        #expect(Set(row(client)?.keys.map { $0 } ?? []) == Set(keys), "\(list.stdout.text)")
        #expect(row(client)?["address"] is NSNull)

        let listening = try await box.runUDS(["ls", "--all", "--state", "listening", "--json"])
        #expect(try rows(listening).allSatisfy { $0["state"] as? String == "listening" })
        #expect(try rows(listening).contains { $0["inode"] as? Int == listener })

        // The table: the client's line names its peer, unnamed as *.
        let text = try await box.runUDS(["ls", "--all"])
        #expect(text.stdout.lines.first?.hasPrefix("TYPE") == true)
        #expect(text.stdout.lines.contains { $0.contains(" \(client) ") && $0.contains(" \(accepted) (srv.sock) ") && $0.hasSuffix(" *") },
            "\(text.stdout.text)")
    }

    @Test("-r finds sockets in subdirectories; --state keeps one state; a bad state is a usage error")
    func recursiveAndState() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        try FileManager.default.createDirectory(atPath: box.resolve("a/b"), withIntermediateDirectories: true)
        _ = try await box.pythonListener("a/b/live.sock")
        try await box.makeStaleSocket(box.resolve("a/old.sock"))

        let flat = try await box.runUDS(["ls", "--json"])
        #expect(try rows(flat).isEmpty, "\(flat.transcript)")
        let deep = try await box.runUDS(["ls", "-r", "--json"])
        #expect(try rows(deep).compactMap { $0["path"] as? String }.sorted() == ["./a/b/live.sock", "./a/old.sock"], "\(deep.transcript)")
        let stale = try await box.runUDS(["ls", "-r", "--state", "stale", "--json"])
        #expect(try rows(stale).compactMap { $0["path"] as? String } == ["./a/old.sock"], "\(stale.transcript)")
        let bad = try await box.runUDS(["ls", "--state", "sleepy"])
        #expect(bad.termination == .exited(64), "\(bad.transcript)")
    }
}
