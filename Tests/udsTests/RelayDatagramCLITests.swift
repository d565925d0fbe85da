import Foundation
import Testing

/// `uds relay unix-listen:FRONT TO --type dgram`: a socket towards TO per
/// sender, answers back to the right sender, quiet senders closed.
@Suite("uds relay --type dgram", .timeLimit(.minutes(2)))
struct RelayDatagramCLITests {

    @Test("each sender gets its own answers; a quiet one is closed and comes back as a new one")
    func twoSenders() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer("./up.dgram", type: .dgram, quiet: true)
        let relay = try box.uds(["relay", "unix-listen:./front.dgram", "./up.dgram", "--type", "dgram", "--idle-timeout", "2", "-v"])
        _ = try await relay.listeningEndpoint()
        let senders = try await box.run(try box.python("dgram_two_senders.py", [box.resolve("front.dgram"), "4"]))
        #expect(senders.termination == .exited(0), "\(senders.transcript)\n\(relay.transcript)")
        #expect(senders.stdout.lines == ["alpha alpha-1 alpha-2", "bravo bravo-1 bravo-2", "alpha alpha-3"],
            "\(senders.transcript)\n\(relay.transcript)")
        let opened = relay.stderr.lines.filter { $0.hasPrefix("uds: connection ") && $0.hasSuffix(" <-> ./up.dgram") }
        #expect(opened.count == 3, "two senders, then alpha again after it idled: \(relay.transcript)")
        #expect(relay.stderr.text.contains("no byte either way for 2.0 s; closed"), "\(relay.transcript)")
        #expect(relay.isRunning)
    }

    @Test("--type dgram needs a listening FROM, and no --once")
    func refused() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let stdio = try await box.runUDS(["relay", "stdio", "./up.dgram", "--type", "dgram"], input: [])
        #expect(stdio.termination == .exited(64), "\(stdio.transcript)")
        let once = try await box.runUDS(["relay", "unix-listen:./f.dgram", "./up.dgram", "--type", "dgram", "--once"], input: [])
        #expect(once.termination == .exited(64), "\(once.transcript)")
    }
}
