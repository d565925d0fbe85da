import Foundation
import Testing

/// `--dump`, `--dump-text` and `--dump-file` on relay, connect and listen:
/// every chunk with its direction, offset and time, as hex and text.
@Suite("uds --dump", .timeLimit(.minutes(2)))
struct DumpCLITests {

    /// The header lines of a dump: direction, label, offset, length.
    private func headers(_ text: String) -> [String] {
        splitLines(text).filter { $0.hasPrefix("> ") || $0.hasPrefix("< ") }.map { line in
            // Drop the timestamp, checked separately.
            let parts = line.split(separator: " ", maxSplits: 2)
            return parts[0] + " " + parts[2]
        }
    }

    @Test("relay --dump-file: both directions, offsets per direction, hex and text columns")
    func relayDumpFile() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        _ = try await box.startEchoServer("./e.sock", quiet: true)
        let relay = try box.uds(["relay", "stdio", "./e.sock", "--dump-file", "d.txt"], withInput: true)
        try relay.write("abc\r\n")
        try await relay.waitForStdout("the first echo") { $0 == "abc\r\n" }
        try relay.write(Array(0..<20))
        try await relay.waitForStdout("the second echo") { $0.utf8.count == 25 }
        relay.closeInput()
        #expect(try await relay.waitForExit() == .exited(0), "\(relay.transcript)")

        let dump = try String(contentsOfFile: box.resolve("d.txt"), encoding: .utf8)
        #expect(headers(dump) == [
            "> connection 1: stdio -> ./e.sock offset 0 length 5",
            "< connection 1: ./e.sock -> stdio offset 0 length 5",
            "> connection 1: stdio -> ./e.sock offset 5 length 20",
            "< connection 1: ./e.sock -> stdio offset 5 length 20",
        ], "\(dump)")
        let lines = splitLines(dump)
        #expect(lines.contains("  00000000  61 62 63 0d 0a                                    |abc..|"), "\(dump)")
        #expect(lines.contains("  00000005  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|"), "\(dump)")
        #expect(lines.contains("  00000015  10 11 12 13                                       |....|"), "\(dump)")
        let stamp = try #require(lines.first?.split(separator: " ").dropFirst().first)
        #expect(stamp.count == 27 && stamp.hasSuffix("Z") && stamp.contains("T"), "\(stamp)")
        #expect(relay.stderr.text.isEmpty, "\(relay.transcript)")
    }

    @Test("listen --dump and connect --dump-text on standard error; data on standard output untouched")
    func connectListenDump() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let listen = try box.uds(["listen", "./l.sock", "--dump"], withInput: true)
        _ = try await listen.listeningEndpoint()
        let connect = try box.uds(["connect", "./l.sock", "--dump-text"], withInput: true)
        try connect.write("GET /\tx\u{1}\r\n")
        try await listen.waitForStdout("the request") { $0 == "GET /\tx\u{1}\r\n" }
        try listen.write("ok\n")
        try await connect.waitForStdout("the answer") { $0 == "ok\n" }
        connect.closeInput()
        listen.closeInput()
        #expect(try await connect.waitForExit() == .exited(0), "\(connect.transcript)")
        #expect(try await listen.waitForExit() == .exited(0), "\(listen.transcript)")

        #expect(headers(connect.stderr.text) == [
            "> stdio -> ./l.sock offset 0 length 10",
            "< ./l.sock -> stdio offset 0 length 3",
        ], "\(connect.transcript)")
        #expect(connect.stderr.lines.contains("GET /\tx\\x01\\r"), "\(connect.transcript)")
        #expect(connect.stderr.lines.contains("ok"), "\(connect.transcript)")
        #expect(listen.stderr.lines.contains("  00000000  47 45 54 20 2f 09 78 01  0d 0a                    |GET /.x...|"),
            "\(listen.transcript)")
    }

    @Test("a dump file that cannot be opened ends the command with one line")
    func unopenableDumpFile() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let relay = try await box.runUDS(["relay", "stdio", "./none.sock", "--dump-file", "./missing/d.txt"], input: [])
        #expect(relay.termination == .exited(1))
        #expect(relay.stderr.lines == ["uds: open(./missing/d.txt): no such file or directory"], "\(relay.transcript)")
    }
}
