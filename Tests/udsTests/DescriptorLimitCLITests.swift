import Foundation
import Testing

/// A server out of descriptors keeps serving: the listener sheds what it
/// cannot take (the reserve descriptor) and waits for room instead of
/// spinning, and nothing in the async server depends on a thread pool that
/// aborts when it cannot open a /proc file.
@Suite("Echo server under a descriptor limit", .timeLimit(.minutes(3)))
struct DescriptorLimitCLITests {
    static let limit = 256
    static let clients = 300

    /// Every way the server runs: async, threads, and readiness handlers (stream only).
    static let variants: [(SocketType, String)] =
        [(.stream, "async"), (.stream, "threads"), (.stream, "handlers"), (.seqpacket, "async"), (.seqpacket, "threads")]

    @Test("300 clients against a limit of 256: the server lives, sheds the excess, and serves again",
          arguments: variants)
    func serverSurvivesRunningOutOfDescriptors(type: SocketType, io: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let script = try box.python("descriptor_limit.py", [
            try Tools.uds(), box.resolve("limit.sock"), type.rawValue, io, "\(Self.limit)", "\(Self.clients)",
        ])
        let run = try await box.run(script, timeout: .seconds(150))
        #expect(run.termination == .exited(0), "\(run.transcript)")
        let summary: String = run.stdout.lines.first ?? ""
        var fields: [String: String] = [:]
        for pair in summary.split(separator: " ") {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        #expect(fields["alive"] == "True", "\(run.transcript)")
        let served = Int(fields["served"] ?? "") ?? 0
        let shed = Int(fields["shed"] ?? "") ?? 0
        #expect(served > 0 && served < Self.clients, "\(run.transcript)")
        #expect(shed > 0, "the limit was reached and the excess shed: \(run.transcript)")
        #expect(served + shed == Self.clients, "\(run.transcript)")
        #expect(fields["shed_reported"] == "True", "\(run.transcript)")
        #expect(fields["echo_after"] == "True", "\(run.transcript)")
        #expect(fields["alive_after"] == "True", "\(run.transcript)")
        #expect(fields["exit"] == "0", "SIGTERM ends it cleanly: \(run.transcript)")
        #expect(fields["file_left"] == "False", "\(run.transcript)")
        #expect((Int(fields["stderr_lines"] ?? "") ?? 99) <= 6, "bounded reports: \(run.transcript)")
    }

    @Test("--log-level warning logs the shedding as a warning")
    func sheddingIsLogged() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let script = try box.python("descriptor_limit.py", [
            try Tools.uds(), box.resolve("limit.sock"), "stream", "async", "\(Self.limit)", "\(Self.clients)",
            "--log-level", "warning",
        ])
        let run = try await box.run(script, timeout: .seconds(150))
        #expect(run.termination == .exited(0), "\(run.transcript)")
        let summary = run.stdout.lines.first ?? ""
        #expect(summary.contains("shed_logged=True"), "\(run.transcript)")
        #expect(summary.contains("exit=0"), "\(run.transcript)")
    }
}
