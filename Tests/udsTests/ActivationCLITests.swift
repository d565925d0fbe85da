#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `uds echo-server` started by the real activator, `systemd-socket-activate`
/// (driven from `Peers/activation.py`, which also runs the clients): it
/// serves the socket it was passed (stream, datagram, seqpacket, one
/// connection with --accept, by name with --fdname), says so on its start-up
/// line, and never removes the activator's socket file.
@Suite("Socket activation", .timeLimit(.minutes(3)))
struct ActivationCLITests {
    struct Outcome: Decodable {
        var ready: Bool?
        var client: [Code]?
        var clients: [[Code]]?
        var exit: Int?
        var stdout: String?
        var stderr: String?
        var file_left: Bool?
    }

    /// An exit status or "timeout".
    enum Code: Decodable, Equatable {
        case number(Int)
        case text(String)
        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let number = try? container.decode(Int.self) { self = .number(number) } else { self = .text(try container.decode(String.self)) }
        }
    }

    /// A client's standard output, from its `[status, stdout]` pair.
    static func output(_ client: [Code]?) -> String {
        if case .text(let text)? = client?.last { return text }
        return ""
    }

    func run(_ activationCase: String) async throws -> (Outcome, String) {
        let activator = try Tools.require("systemd-socket-activate", package: "systemd")
        let box = try Sandbox()
        defer { box.cleanup() }
        let driver = try await box.run(
            try box.python("activation.py", [try Tools.uds(), activator, box.path, activationCase]), timeout: .seconds(150))
        let line = try #require(driver.stdout.lines.first { $0.hasPrefix("{") }, "\(driver.transcript)")
        return (try JSONDecoder().decode(Outcome.self, from: Data(line.utf8)), driver.transcript)
    }

    @Test("a stream listener, a datagram socket and a seqpacket listener are served where they were passed",
          arguments: ["stream", "dgram", "seqpacket"])
    func servesThePassedSocket(type: String) async throws {
        let (outcome, transcript) = try await run(type)
        #expect(outcome.ready == true, "\(transcript)")
        #expect(outcome.client?.first == .number(0), "\(transcript)")
        #expect(Self.output(outcome.client).contains("received b'activated'"), "\(transcript)")
        #expect(outcome.stdout?.contains("starting up on activated socket unknown (") == true, "\(transcript)")
        #expect(outcome.exit == 0, "SIGTERM ends it cleanly: \(transcript)")
        #expect(outcome.file_left == true, "the activator's file is the activator's: \(transcript)")
    }

    @Test("--log-level info logs each passed socket, and the graceful shutdown leaves the activator's file")
    func activationIsLogged() async throws {
        let (outcome, transcript) = try await run("logged")
        #expect(outcome.ready == true, "\(transcript)")
        #expect(outcome.client?.first == .number(0), "\(transcript)")
        let lines = splitLines(outcome.stderr ?? "")
        for (name, fd) in [("alpha", 3), ("beta", 4)] {
            #expect(lines.contains { $0.hasPrefix("uds: info: socket activation: took a socket ")
                && $0.contains(" fd=\(fd) ") && $0.contains(" listening=true name=\(name) type=stream") }, "\(transcript)")
        }
        #expect(lines.contains { $0.hasPrefix("uds: info: shutting down: no longer accepting ") }, "\(transcript)")
        #expect(outcome.exit == 0, "\(transcript)")
        #expect(outcome.file_left == true, "the activator's file is the activator's: \(transcript)")
    }

    @Test("--accept: inetd-style, each connection is one echo-server run on descriptor 3")
    func inetdStyleServesOneConnection() async throws {
        let (outcome, transcript) = try await run("accept")
        #expect(outcome.ready == true, "\(transcript)")
        #expect(outcome.clients?.map(\.first) == [.number(0), .number(0)], "\(transcript)")
        let outputs = (outcome.clients ?? []).map { Self.output($0) }
        #expect(outputs.count == 2 && outputs[0].contains("received b'round 0'") && outputs[1].contains("received b'round 1'"),
                "\(transcript)")
    }

    @Test("several sockets: --activated picks one by its --fdname")
    func severalSocketsByName() async throws {
        let (outcome, transcript) = try await run("named")
        #expect(outcome.client?.first == .number(0), "\(transcript)")
        #expect(Self.output(outcome.client).contains("received b'to beta'"), "\(transcript)")
        #expect(outcome.stdout?.contains("starting up on activated socket beta (") == true, "\(transcript)")
        #expect(outcome.exit == 0, "\(transcript)")
    }

    @Test("several sockets without --activated: one error line naming them")
    func severalSocketsWithoutAName() async throws {
        let (outcome, transcript) = try await run("ambiguous")
        #expect(outcome.exit == 1, "\(transcript)")
        let lines = (outcome.stderr ?? "").split(separator: "\n").filter { $0.hasPrefix("uds:") }
        #expect(lines == ["uds: activation: 2 sockets were passed (gamma, delta): choose one by name"], "\(transcript)")
    }
}

