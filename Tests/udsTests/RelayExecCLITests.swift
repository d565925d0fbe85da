import Foundation
import Testing

/// `uds relay ... exec:CMD`: a command per connection, its standard input
/// and output the stream, like socat's EXEC.
@Suite("uds relay exec:", .timeLimit(.minutes(2)))
struct RelayExecCLITests {

    @Test("each connection gets its own command; half-close reaches it as end-of-file")
    func commandPerConnection() async throws {
        let socat = try Tools.socat()
        let box = try Sandbox()
        defer { box.cleanup() }
        let relay = try box.uds(["relay", "unix-listen:./x.sock", "exec:tr a-z A-Z", "-v"])
        _ = try await relay.listeningEndpoint()
        for word in ["hello", "second"] {
            let client = try box.spawn("socat", socat, ["-t", "5", "-", "UNIX-CONNECT:./x.sock"], withInput: true)
            try client.write(word + "\n")
            client.closeInput()
            #expect(try await client.waitForExit() == .exited(0), "\(client.transcript)")
            #expect(client.stdout.text == word.uppercased() + "\n", "\(client.transcript)\n\(relay.transcript)")
        }
        // The command answers only at end-of-file: it must get one.
        let count = try await box.runUDS(["relay", "stdio", "exec:wc -c"], input: Array(repeating: 0x61, count: 100_000))
        #expect(count.termination == .exited(0), "\(count.transcript)")
        #expect(count.stdout.text.trimmingCharacters(in: .whitespacesAndNewlines) == "100000", "\(count.transcript)")
    }

    @Test("the command does not inherit the relay's ignored SIGPIPE")
    func sigpipeDefault() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let relay = try await box.runUDS(["relay", "stdio", "exec:grep SigIgn /proc/$$/status"], input: [])
        let field = relay.stdout.text.split(separator: "\t").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        let mask = try #require(field.flatMap { UInt64($0, radix: 16) }, "\(relay.transcript)")
        #expect(mask & (1 << 12) == 0, "SIGPIPE (13) is ignored in the command: \(relay.transcript)")
    }

    @Test("exec: with no command, and listening on exec:, are refused")
    func badExec() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let empty = try await box.runUDS(["relay", "stdio", "exec:"], input: [])
        #expect(empty.termination == .exited(1))
        #expect(empty.stderr.lines == ["uds: exec(exec:): no command after exec:"], "\(empty.transcript)")
        let listen = try await box.runUDS(["listen", "exec:cat"], input: [])
        #expect(listen.termination == .exited(64), "\(listen.transcript)")
    }
}
