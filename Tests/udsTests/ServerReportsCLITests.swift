#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// What `uds echo-server` prints on standard error when many clients leave
/// before reading their echo: a count, not a line per client. The bounds are
/// in lines per elapsed interval, so a slow machine changes the numbers seen,
/// never whether the test passes.
@Suite("Server reports are bounded", .timeLimit(.minutes(3)))
struct ServerReportsCLITests {
    static let clients = 2000
    /// The reporting interval the server uses, in seconds.
    static let interval = 10.0

    /// The most lines `keys` kinds of report may take in `elapsed` seconds:
    /// per kind, the first at once and then one summary per interval begun.
    static func lineBound(keys: Int, elapsed: Double) -> Int {
        keys * (2 + Int(elapsed / interval))
    }

    /// The count in a summary line (`uds: 57 clients left ...`, `uds: write: broken pipe: 57 more ...`).
    static func count(in line: String, before marker: String) -> Int? {
        guard let range = line.range(of: marker) else { return nil }
        return line[..<range.lowerBound].split(separator: " ").last.flatMap { Int($0) }
    }

    @Test("--quiet: clients that leave early are counted, at most a line per interval; the server still echoes",
          arguments: IOModel.allCases)
    func quietServerCountsEarlyLeavers(io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let started = ContinuousClock.now
        let server = try await box.startEchoServer("e.sock", io.options, quiet: true)

        let leavers = try await box.run(try box.python("early_leavers.py", ["e.sock", "\(Self.clients)"]), timeout: .seconds(90))
        #expect(leavers.termination == .exited(0), "\(leavers.transcript)")
        #expect(leavers.stdout.lines == ["done \(Self.clients)"], "\(leavers.transcript)")

        let client = try await box.run(try box.uds(["echo-client", "e.sock", "--message", "still here"]))
        #expect(client.termination == .exited(0), "\(client.transcript)")
        #expect(client.stdout.lines.contains("received b'still here'"), "\(client.transcript)")

        // Every client ends in one EPIPE or ECONNRESET; wait until all are
        // counted (a summary is due at most an interval after the last).
        func reported() -> Int {
            server.stderr.lines.reduce(0) { total, line in
                if line.hasPrefix("uds: a client left before reading its echo (") { return total + 1 }
                return total + (Self.count(in: line, before: " client") ?? 0)
            }
        }
        _ = await poll(timeout: .seconds(90), every: .milliseconds(200)) { reported() >= Self.clients }
        let elapsed = Double((ContinuousClock.now - started).components.seconds) + 1

        let lines = server.stderr.lines
        #expect(reported() == Self.clients, "\(server.transcript)")
        #expect(lines.count <= Self.lineBound(keys: 1, elapsed: elapsed), "\(lines.count) lines in \(elapsed) s:\n\(server.transcript)")
        #expect(lines.first?.hasPrefix("uds: a client left before reading its echo (") == true, "\(server.transcript)")
        #expect(lines.first?.hasSuffix("); more are counted, one line per 10 s at most") == true, "\(server.transcript)")
        for line in lines.dropFirst() {
            #expect(line.hasPrefix("uds: ") && line.hasSuffix(" clients left before reading their echo in the last 10 s")
                || line == "uds: 1 client left before reading its echo in the last 10 s", "\(line)")
        }
        #expect(server.stdout.lines == ["starting up on e.sock"], "\(server.transcript)")
        #expect(server.isRunning)
    }

    @Test("without --quiet each kind of failure is printed once, then counted per interval")
    func verboseServerLimitsEachFailure() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let started = ContinuousClock.now
        let server = try await box.startEchoServer("e.sock")

        let leavers = try await box.run(try box.python("early_leavers.py", ["e.sock", "\(Self.clients)"]), timeout: .seconds(90))
        #expect(leavers.termination == .exited(0), "\(leavers.transcript)")

        // The two ways a client that left shows: its echo cannot be written,
        // or (when the echo was written first) the next read is reset.
        let printed = ["uds: write(e.sock): broken pipe", "uds: read(e.sock): connection reset by peer"]
        let failures = ["write: broken pipe", "read: connection reset by peer"]
        func reported() -> Int {
            server.stderr.lines.reduce(0) { total, line in
                if printed.contains(line) { return total + 1 }
                return total + (Self.count(in: line, before: " more in the last 10 s") ?? 0)
            }
        }
        _ = await poll(timeout: .seconds(90), every: .milliseconds(200)) { reported() >= Self.clients }
        let elapsed = Double((ContinuousClock.now - started).components.seconds) + 1

        let lines = server.stderr.lines
        #expect(reported() == Self.clients, "\(server.transcript)")
        #expect(lines.count <= Self.lineBound(keys: 2, elapsed: elapsed), "\(lines.count) lines in \(elapsed) s:\n\(server.transcript)")
        for line in lines {
            #expect(printed.contains(line) || failures.contains { line.hasPrefix("uds: \($0): ") && line.hasSuffix(" more in the last 10 s") },
                    "\(line)")
        }
        #expect(server.isRunning)
    }
}
