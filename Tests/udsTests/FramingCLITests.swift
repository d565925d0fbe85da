import Foundation
import Testing

/// `uds connect`, `uds listen` and `uds echo-server` with `--frame`, against
/// a Python peer (Peers/frame_peer.py) that frames with `struct.pack` and
/// delimiters: both directions, frames that arrive a byte at a time, many
/// frames in one write, and a frame over the limit.
@Suite("Framing CLI", .timeLimit(.minutes(2)))
struct FramingCLITests {
    static let formats = ["lines", "nul", "u8", "u16le", "u32be", "u64le"]

    /// What uds sends: one frame per input line.
    static let inputLines = ["one", "", "tab\there", #"{"id":2,"ok":true}"#, #"back\slash"#]
    /// The same frames as the peer prints them, escaped.
    static let escapedInput = ["one", "", #"tab\x09here"#, #"{"id":2,"ok":true}"#, #"back\\slash"#]
    static var input: [UInt8] { Array(inputLines.map { $0 + "\n" }.joined().utf8) }

    /// The peer's lines that start with `prefix`, without it.
    private func lines(_ peer: Child, _ prefix: String) -> [String] {
        peer.stdout.lines.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    /// Checks one conversation: uds printed every frame the peer sent, and
    /// the peer got every input line as a frame.
    private func expectConversation(uds: Child, peer: Child) {
        #expect(uds.termination == .exited(0), "\(uds.transcript)\n\(peer.transcript)")
        #expect(peer.termination == .exited(0), "\(peer.transcript)")
        let sent = lines(peer, "sent ")
        #expect(sent.count >= 6, "\(peer.transcript)")
        #expect(uds.stdout.lines == sent)
        #expect(lines(peer, "got ") == Self.escapedInput)
        #expect(!peer.stdout.text.contains("partial"), "\(peer.transcript)")
    }

    @Test("uds connect --frame against a Python server", arguments: formats)
    func udsAsClient(format: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let peer = try box.python("frame_peer.py", ["serve", "./peer.sock", format, "talk"])
        try await peer.waitForLine("ready")
        let uds = try await box.runUDS(["connect", "./peer.sock", "--frame", format], input: Self.input)
        _ = try await peer.waitForExit()
        expectConversation(uds: uds, peer: peer)
    }

    @Test("uds listen --frame against a Python client", arguments: formats)
    func udsAsServer(format: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let uds = try box.uds(["listen", "./uds.sock", "--frame", format], withInput: true)
        try uds.write(Self.input)
        uds.closeInput()
        _ = try await uds.listeningEndpoint()
        let peer = try await box.run(try box.python("frame_peer.py", ["connect", "./uds.sock", format, "talk"]))
        _ = try await uds.waitForExit()
        expectConversation(uds: uds, peer: peer)
    }

    @Test("a frame over --max-frame is refused with its length and the limit, and the connection closed",
          arguments: ["lines", "nul", "u8", "u32be", "u64le"])
    func oversizeFrame(format: String) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let peer = try box.python("frame_peer.py", ["serve", "./peer.sock", format, "oversize"])
        try await peer.waitForLine("ready")
        // Standard input stays open: only the refused frame may end the connection.
        let uds = try box.uds(["connect", "./peer.sock", "--frame", format, "--max-frame", "100"], withInput: true)
        _ = try await uds.waitForExit()
        _ = try await peer.waitForExit()
        #expect(uds.termination == .exited(1), "\(uds.transcript)")
        let reason = switch format {
        case "lines", "nul": "frame is longer than the limit of 100 bytes"
        case "u8": "frame is 255 bytes long; the limit is 100"
        default: "frame is 1000000 bytes long; the limit is 100"
        }
        #expect(uds.stderr.lines == ["uds: read(./peer.sock): \(reason)"], "\(uds.transcript)")
        #expect(peer.stdout.lines.last == "closed", "\(peer.transcript)")
    }

    @Test("uds listen refuses an oversize frame from a Python client and closes the connection")
    func oversizeFrameAsServer() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let uds = try box.uds(["listen", "./uds.sock", "--frame", "u32be", "--max-frame", "100"], withInput: true)
        _ = try await uds.listeningEndpoint()
        let peer = try await box.run(try box.python("frame_peer.py", ["connect", "./uds.sock", "u32be", "oversize"]))
        _ = try await uds.waitForExit()
        #expect(peer.stdout.lines == ["closed"], "\(peer.transcript)")
        #expect(uds.termination == .exited(1))
        #expect(uds.stderr.text.contains("frame is 1000000 bytes long; the limit is 100"), "\(uds.transcript)")
    }

    @Test("uds echo-server --frame echoes whole frames", arguments: ["lines", "nul", "u16le", "u32be"], [IOModel.async, .threads])
    func echoServer(format: String, io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", ["--frame", format] + io.options)
        let peer = try await box.run(try box.python("frame_peer.py", ["connect", "./echo.sock", format, "talk"]))
        #expect(peer.termination == .exited(0), "\(peer.transcript)")
        let sent = lines(peer, "sent ")
        #expect(sent.count >= 6)
        #expect(lines(peer, "got ") == sent, "\(peer.transcript)\n\(server.transcript)")
        try await server.waitForLine("waiting for a connection", count: 3)
        #expect(server.stdout.lines.contains("received frame hello"), "\(server.transcript)")
        #expect(server.stdout.lines.contains("received frame back\\\\slash"), "\(server.transcript)")
    }

    @Test("uds echo-server --frame closes a connection that sends an oversize frame, and serves on", arguments: [IOModel.async, .threads])
    func echoServerRefusesOversize(io: IOModel) async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let server = try await box.startEchoServer("./echo.sock", ["--frame", "u32be", "--max-frame", "4000"] + io.options)
        let peer = try await box.run(try box.python("frame_peer.py", ["connect", "./echo.sock", "u32be", "oversize"]))
        #expect(peer.stdout.lines == ["closed"], "\(peer.transcript)\n\(server.transcript)")
        try await server.waitForStderr("the refusal") { $0.contains("frame is 1000000 bytes long; the limit is 4000") }
        let next = try await box.run(try box.python("frame_peer.py", ["connect", "./echo.sock", "u32be", "talk"]))
        #expect(lines(next, "got ") == lines(next, "sent "), "another connection is served")
        #expect(server.isRunning)
    }

    @Test("--frame and --max-frame are checked before any socket exists")
    func validation() async throws {
        let box = try Sandbox()
        defer { box.cleanup() }
        let datagram = try await box.runUDS(["connect", "./x.sock", "--type", "dgram", "--frame", "lines"])
        #expect(datagram.termination == .exited(64))
        #expect(datagram.stderr.text.contains("--frame needs --type stream"))
        let unknown = try await box.runUDS(["connect", "./x.sock", "--frame", "u24be"])
        #expect(unknown.termination == .exited(64))
        let alone = try await box.runUDS(["listen", "./x.sock", "--max-frame", "10"])
        #expect(alone.stderr.text.contains("--max-frame needs --frame"))
        let range = try await box.runUDS(["echo-server", "./x.sock", "--frame", "u32be", "--max-frame", "0"])
        #expect(range.termination == .exited(64))
        let handlers = try await box.runUDS(["echo-server", "./x.sock", "--frame", "lines", "--io", "handlers"])
        #expect(handlers.stderr.text.contains("--frame needs --type stream and --io async or threads"))
        #expect(box.entries().isEmpty)
    }
}
