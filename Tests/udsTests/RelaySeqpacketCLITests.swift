import Foundation
import Testing

/// `uds relay --type seqpacket`: messages relayed whole, both ways.
@Suite("uds relay --type seqpacket", .timeLimit(.minutes(2)))
struct RelaySeqpacketCLITests {

    @Test("message boundaries survive the relay, up to the send buffer; the end travels too")
    func boundaries() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer("./up.sock", type: .seqpacket, ["--chunk", "262144"], quiet: true)
        let relay = try box.uds(["relay", "unix-listen:./front.sock", "./up.sock", "--type", "seqpacket", "--once", "-v"])
        _ = try await relay.listeningEndpoint()
        let client = try await box.run(try box.python("seqpacket_sizes.py", ["./front.sock", "1", "1000", "70000", "200000", "3"]))
        #expect(client.stdout.lines == ["1 1000 70000 200000 3 end"], "\(client.transcript)\n\(relay.transcript)")
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")
        let total = 1 + 1000 + 70000 + 200000 + 3
        #expect(relay.stderr.lines.contains("uds: connection 1 closed: \(total) bytes forward, \(total) bytes back"),
            "\(relay.transcript)")
    }

    @Test("--type seqpacket with a TCP side is refused")
    func refused() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let tcp = try await box.runUDS(["relay", "tcp-listen:0", "./up.sock", "--type", "seqpacket"], input: [])
        #expect(tcp.termination == .exited(1), "\(tcp.transcript)")
        #expect(tcp.stderr.text.contains("seqpacket needs a Unix socket address"), "\(tcp.transcript)")
    }
}
