#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Sizes, counts and durations from the command line: a value out of range is
/// one usage line (option, value, range) with exit status 64, before any
/// socket exists; never a crash.
@Suite("Option bounds from the CLI", .timeLimit(.minutes(2)))
struct BoundsCLITests {
    struct Case: CustomStringConvertible, Sendable {
        let arguments: [String]
        /// The option and the value as the error line names them.
        let shown: String
        let range: String
        var description: String { arguments.joined(separator: " ") }
    }

    static let buffer = "1 to 67108864 bytes (64 MiB)"
    static let seconds = "0 to 86400 seconds (24 hours)"
    static let positiveSeconds = "more than 0, up to 86400 seconds (24 hours)"

    static let cases: [Case] = [
        // The crash this guards against: a buffer that cannot be allocated.
        Case(arguments: ["echo-server", "--chunk", "1000000000000"], shown: "--chunk 1000000000000", range: buffer),
        Case(arguments: ["echo-server", "e.sock", "--type", "dgram", "--chunk", "1000000000000"],
             shown: "--chunk 1000000000000", range: buffer),
        Case(arguments: ["echo-server", "e.sock", "--io", "threads", "--chunk", "67108865"], shown: "--chunk 67108865", range: buffer),
        Case(arguments: ["echo-server", "e.sock", "--chunk", "0"], shown: "--chunk 0", range: buffer),
        Case(arguments: ["echo-server", "e.sock", "--chunk", "-5"], shown: "--chunk -5", range: buffer),
        Case(arguments: ["echo-server", "e.sock", "--chunk=-1"], shown: "--chunk -1", range: buffer),
        Case(arguments: ["echo-client", "nobody.sock", "--chunk", "1000000000000"], shown: "--chunk 1000000000000", range: buffer),
        Case(arguments: ["echo-client", "nobody.sock", "--chunk", "-16"], shown: "--chunk -16", range: buffer),
        Case(arguments: ["echo-client", "nobody.sock", "--timeout", "0"], shown: "--timeout 0", range: positiveSeconds),
        Case(arguments: ["echo-client", "nobody.sock", "--timeout", "1e300"], shown: "--timeout 1e300", range: positiveSeconds),
        Case(arguments: ["bench", "b.sock", "--size", "1000000000000"], shown: "--size 1000000000000", range: buffer),
        Case(arguments: ["bench", "b.sock", "--size", "-1"], shown: "--size -1", range: buffer),
        Case(arguments: ["bench", "b.sock", "--connections", "0"], shown: "--connections 0", range: "1 to 10000"),
        Case(arguments: ["bench", "b.sock", "--connections", "10001"], shown: "--connections 10001", range: "1 to 10000"),
        Case(arguments: ["bench", "b.sock", "--connections", "100", "--size", "67108864"],
             shown: "--connections 100 with --size 67108864",
             range: "connections times size at most 1073741824 bytes (1 GiB)"),
        Case(arguments: ["bench", "b.sock", "--mode", "stream", "--bytes", "-1"], shown: "--bytes -1",
             range: "1 to 1099511627776 bytes (1 TiB)"),
        Case(arguments: ["bench", "b.sock", "--mode", "stream", "--write-size", "1000000000000"],
             shown: "--write-size 1000000000000", range: buffer),
        Case(arguments: ["bench", "b.sock", "--duration", "inf"], shown: "--duration inf", range: positiveSeconds),
        Case(arguments: ["bench", "b.sock", "--warmup", "-1"], shown: "--warmup -1", range: seconds),
        Case(arguments: ["recv", "r.sock", "--count", "0"], shown: "--count 0", range: "at least 1"),
        Case(arguments: ["recv", "r.sock", "--count", "-3"], shown: "--count -3", range: "at least 1"),
        Case(arguments: ["recv", "r.sock", "--timeout", "1e300"], shown: "--timeout 1e300", range: seconds),
        Case(arguments: ["send", "nobody.sock", "--timeout", "90000"], shown: "--timeout 90000", range: seconds),
        Case(arguments: ["relay", "unix-listen:x.sock", "stdio", "--max-conns", "0"], shown: "--max-conns 0", range: "1 to 10000"),
        Case(arguments: ["relay", "unix-listen:x.sock", "nobody.sock", "--timeout", "-2s"], shown: "--timeout -2s", range: seconds),
        // A duration that used to trap while it was parsed.
        Case(arguments: ["connect", "nobody.sock", "--timeout", "1e300"], shown: "--timeout 1e300", range: seconds),
        Case(arguments: ["connect", "nobody.sock", "--linger", "2000m"], shown: "--linger 2000m", range: seconds),
        Case(arguments: ["listen", "l.sock", "--linger", "-1"], shown: "--linger -1", range: seconds),
        Case(arguments: ["probe", "nobody.sock", "--timeout", "1e12"], shown: "--timeout 1e12", range: seconds),
    ]

    @Test("an out-of-range value is one usage line and exit status 64, and no socket file", arguments: cases)
    func outOfRange(_ test: Case) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let child = try await box.run(try box.uds(test.arguments))
        #expect(child.termination == .exited(64), "\(child.transcript)")
        #expect(child.stderr.lines == ["uds: \(test.shown) is out of range: \(test.range)"], "\(child.transcript)")
        #expect(child.stdout.text == "", "\(child.transcript)")
        // Nothing was bound: not the address given, not the default ./uds_socket.
        #expect(box.entries() == [], "\(box.entries())")
    }

    @Test("the largest chunk is accepted and echoes")
    func largestChunkWorks() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("e.sock", ["--chunk", "67108864"], quiet: true)
        let client = try await box.run(try box.uds(["echo-client", "e.sock", "--chunk", "67108864", "--message", "hello"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.text.contains("b'hello'"), "\(client.transcript)")
        #expect(server.isRunning)
        #expect(server.stderr.text == "", "\(server.transcript)")
    }

    /// Help gives the short form (`OptionRange.help`); errors the exact one.
    @Test("help gives each range")
    func helpNamesTheRange() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        /// Help wraps its lines: compare with the line breaks undone.
        func unwrapped(_ child: Child) -> String {
            child.stdout.text.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        }
        let server = try await box.run(try box.uds(["echo-server", "--help"]))
        #expect(unwrapped(server).contains("--chunk <chunk> Bytes read at a time, 1 to 64 MiB"), "\(server.transcript)")
        let bench = try await box.run(try box.uds(["bench", "--help"]))
        #expect(unwrapped(bench).contains("1 to 10000; connections times size at most 1 GiB"), "\(bench.transcript)")
    }
}
