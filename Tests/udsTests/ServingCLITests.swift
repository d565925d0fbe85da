import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `uds listen`, `recv`, `recv-fd` and `relay unix-listen:` like `echo-server`:
/// they serve the socket a service manager passed (the real activator,
/// `systemd-socket-activate`), say so on their start-up line and leave its
/// file alone; and --allow-uid/--allow-gid refuse other peers, one line each.
/// Driven from `Peers/serving.py`, which also runs the clients.
@Suite("Access control and activation for listen, recv, recv-fd and relay", .timeLimit(.minutes(3)))
struct ServingCLITests {
    struct Outcome: Decodable {
        var ready: Bool?
        var client: Client?
        var exit: Int?
        var stdout: String?
        var stderr: String?
        var file_left: Bool?
        var running: Bool?
    }

    /// A client's output, or a command's `[status, stdout, stderr]`.
    enum Client: Decodable {
        case output(String)
        case command(status: String, stdout: String, stderr: String)

        init(from decoder: any Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                self = .output(text)
                return
            }
            var fields = try decoder.unkeyedContainer()
            let number = try? fields.decode(Int.self)
            let status = try number.map(String.init) ?? fields.decode(String.self)
            self = .command(status: status, stdout: try fields.decode(String.self), stderr: try fields.decode(String.self))
        }

        var text: String {
            switch self {
            case .output(let text): text
            case .command(_, let stdout, _): stdout
            }
        }

        var status: String? {
            if case .command(let status, _, _) = self { return status }
            return nil
        }
    }

    func run(_ servingCase: String) async throws -> (Outcome, String) {
        let activator = try Tools.require("systemd-socket-activate", package: "systemd")
        let box = try Sandbox()
        defer { box.cleanup() }
        let driver = try await box.run(
            try box.python("serving.py", [try Tools.uds(), activator, box.path, servingCase]), timeout: .seconds(150))
        let line = try #require(driver.stdout.lines.first { $0.hasPrefix("{") }, "\(driver.transcript)")
        return (try JSONDecoder().decode(Outcome.self, from: Data(line.utf8)), driver.transcript)
    }

    @Test("listen serves the passed stream listener")
    func listenServesTheActivatedSocket() async throws {
        let (outcome, transcript) = try await run("listen")
        #expect(outcome.ready == true, "\(transcript)")
        #expect(outcome.stdout == "hello from the client\n", "\(transcript)")
        #expect(outcome.stderr?.contains("uds: listening on activated socket unknown (") == true, "\(transcript)")
        #expect(outcome.exit == 0, "\(transcript)")
        #expect(outcome.file_left == true, "the activator's file is the activator's: \(transcript)")
    }

    @Test("recv serves the passed datagram socket")
    func recvServesTheActivatedSocket() async throws {
        let (outcome, transcript) = try await run("recv")
        #expect(outcome.client?.status == "0", "\(transcript)")
        #expect(outcome.stdout == "one datagram\n", "\(transcript)")
        #expect(outcome.stderr?.contains("uds: listening on activated socket unknown (") == true, "\(transcript)")
        #expect(outcome.exit == 0, "\(transcript)")
        #expect(outcome.file_left == true, "\(transcript)")
    }

    @Test("recv-fd takes descriptors on the passed listener")
    func recvFDServesTheActivatedSocket() async throws {
        let (outcome, transcript) = try await run("recv-fd")
        #expect(outcome.client?.status == "0", "\(transcript)")
        #expect(outcome.stdout == "the handed file\n", "\(transcript)")
        #expect(outcome.stderr?.contains("uds: listening on activated socket unknown (") == true, "\(transcript)")
        #expect(outcome.exit == 0, "\(transcript)")
        #expect(outcome.file_left == true, "\(transcript)")
    }

    @Test("relay unix-listen: relays from the passed listener")
    func relayServesTheActivatedSocket() async throws {
        let (outcome, transcript) = try await run("relay")
        #expect(outcome.client?.status == "0", "\(transcript)")
        #expect(outcome.client?.text.contains("received b'relayed'") == true, "\(transcript)")
        #expect(outcome.stderr?.contains("uds: listening on activated socket unknown (") == true, "\(transcript)")
        #expect(outcome.exit == 0, "\(transcript)")
        #expect(outcome.file_left == true, "\(transcript)")
    }

    @Test("--allow-uid or --allow-gid of another refuses our client: one line naming it (and with --log-level, one log record), and the command goes on",
          arguments: ["listen", "recv", "recv-fd", "relay"])
    func refusesOtherPeers(command: String) async throws {
        let (outcome, transcript) = try await run("refuse-" + command)
        #expect(outcome.ready == true, "\(transcript)")
        let lines = (outcome.stderr ?? "").split(separator: "\n").filter { $0.hasPrefix("uds: refused a connection from pid=") }
        #expect(lines.count == 1, "\(transcript)")
        #expect(lines.first?.hasSuffix(": not an allowed uid or gid") == true, "\(transcript)")
        #expect(lines.first?.contains("uid=\(getuid()) gid=\(getgid())") == true, "\(transcript)")
        #expect(outcome.running == true, "a refusal does not end the command: \(transcript)")
        let logged = (outcome.stderr ?? "").split(separator: "\n").filter {
            $0.hasPrefix("uds: notice: refused a connection: the access policy does not admit the peer peer.gid=\(getgid()) ")
        }
        #expect(logged.count == 1, "--log-level notice logs the refusal: \(transcript)")
        // Refused peers are closed unread: end of stream, or, for a seqpacket
        // message sent after the close, a broken pipe or reset.
        #expect(["", "ConnectionResetError", "BrokenPipeError"].contains(outcome.client?.text ?? "none"), "\(transcript)")
        #expect(outcome.stdout == "", "nothing of the refused peer is printed: \(transcript)")
    }

    @Test("--allow-uid of our user admits us")
    func admitsOurUser() async throws {
        let (outcome, transcript) = try await run("admit-listen")
        #expect(outcome.stdout == "let me in\n", "\(transcript)")
        #expect(outcome.stderr?.contains("refused") == false, "\(transcript)")
    }

    @Test("access options with datagrams are a usage error, as for echo-server",
          arguments: [["recv", "@x", "--allow-uid", "4242"], ["relay", "unix-listen:@x", "@y", "--type", "dgram", "--allow-gid", "4242"]])
    func datagramsHaveNoPeersToRefuse(arguments: [String]) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let command = try await box.run(try box.uds(arguments))
        #expect(command.termination == .exited(64), "\(command.transcript)")
        #expect(command.stderr.text.contains("--allow-uid and --allow-gid need connections"), "\(command.transcript)")
    }
}
