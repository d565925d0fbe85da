import Foundation
import Testing

/// The echo server's transcript stays attributable when clients overlap: the
/// lone client's untagged lines are named once the second client arrives.
@Suite("echo-server overlapping transcripts", .timeLimit(.minutes(2)))
struct EchoOverlapTests {

    @Test("the untagged lines before an overlap are named as the first client's", arguments: IOModel.allCases)
    func untaggedLinesNamed(io: IOModel) async throws {
        let socat = try Tools.socat()
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", io.options)
        let connect = ["-t", "2", "-", "UNIX-CONNECT:./echo.sock"]

        // The readiness probe was client 1; alpha is client 2, bravo client 3.
        let alpha = try box.spawn("socat alpha", socat, connect, withInput: true)
        try alpha.write("alpha-1\n")
        try await alpha.waitForStdout("alpha-1") { $0 == "alpha-1\n" }
        let bravo = try box.spawn("socat bravo", socat, connect, withInput: true)
        try bravo.write("bravo-1\n")
        try await bravo.waitForStdout("bravo-1") { $0 == "bravo-1\n" }
        alpha.closeInput()
        bravo.closeInput()
        _ = try await alpha.waitForExit()
        _ = try await bravo.waitForExit()
        try await server.waitForStdout("both sessions ended") { text in
            splitLines(text).filter { $0.contains("no data from") }.count == 3
        }

        let lines = server.stdout.lines
        let marker = "[client 2] (the untagged lines since its connection were client 2's)"
        let alphaLine = lines.firstIndex(of: "received b'alpha-1\\n'")
        let markerLine = lines.firstIndex(of: marker)
        let bravoLine = lines.firstIndex(of: "[client 3] connection from ")
        #expect(alphaLine != nil && markerLine != nil && bravoLine != nil, "\(server.transcript)")
        if let alphaLine, let markerLine, let bravoLine {
            #expect(alphaLine < markerLine && markerLine < bravoLine, "\(server.transcript)")
            // After the marker, nothing of alpha's goes untagged.
            #expect(!lines[markerLine...].contains { !$0.hasPrefix("[client") && $0.contains("alpha") }, "\(server.transcript)")
        }
        #expect(lines.filter { $0 == marker }.count == 1, "\(server.transcript)")
        // The probe session ended before alpha came: no marker names it.
        #expect(!lines.contains { $0.hasPrefix("[client 1] (") }, "\(server.transcript)")
    }
}
