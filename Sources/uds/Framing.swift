import ArgumentParser
import UDSKit

// `--frame`: messages over a stream, for connect, listen and echo-server.
// Input lines become frames; frames received are printed one per line,
// escaped, so that any bytes, newlines and NULs included, fit on one line.

/// A frame format as `--frame` names it.
enum FrameFormatOption: String, ExpressibleByArgument, CaseIterable {
    case lines, nul, u8, u16be, u16le, u32be, u32le, u64be, u64le
}

/// `--frame` and `--max-frame`, as connect, listen and echo-server declare
/// them (plain options: an option group leaks in the argument parser when
/// parsing fails, which the sanitizer run reports).
enum FrameOptions {
    static let frameHelp = ArgumentHelp("Send and receive messages: lines and nul end each frame with \\n or a NUL byte; u8 to u64le put its length before it (8 to 64 bits, be big-endian, le little-endian). Each input line is sent as one frame; each frame received is printed on one line, with bytes other than printable ASCII as \\xNN and a backslash as \\\\.")
    static let echoFrameHelp = ArgumentHelp("Echo whole frames (stream, --io async or threads): lines and nul end each frame with \\n or a NUL byte; u8 to u64le put its length before it (8 to 64 bits, be big-endian, le little-endian).")
    static let maxFrameHelp = ArgumentHelp("With --frame: the longest frame read or sent, \(OptionRange.bufferSize.text) (default 8388608); a longer frame ends the connection with an error.")

    /// Checks the two options together, for `validate()`.
    static func check(_ frame: FrameFormatOption?, maxFrame: Int?) throws {
        try OptionRange.bufferSize.check("--max-frame", maxFrame)
        if maxFrame != nil && frame == nil { throw ValidationError("--max-frame needs --frame") }
    }

    /// The format, or nil for a plain stream.
    static func format(_ frame: FrameFormatOption?, maxFrame: Int?) -> FrameFormat? {
        frame.map { FrameFormat($0.rawValue, maximumLength: maxFrame ?? FrameFormat.defaultMaximumLength)! }
    }
}

/// A frame as one printable line: printable ASCII as it is, a backslash as
/// `\\`, every other byte as `\xNN`.
func escapedFrame(_ frame: [UInt8]) -> String {
    var text = ""
    text.reserveCapacity(frame.count)
    let digits = Array("0123456789abcdef")
    for byte in frame {
        switch byte {
        case UInt8(ascii: "\\"): text += "\\\\"
        case 0x20...0x7E: text.append(Character(Unicode.Scalar(byte)))
        default: text += "\\x" + String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0xF)])
        }
    }
    return text
}

/// A stream connection that carries frames: each delivered line is one
/// frame, and each frame received is printed as an escaped line.
struct FramedSession: Session {
    let connection: StreamSocket
    let format: FrameFormat

    func deliver(_ bytes: [UInt8]) throws { try connection.writeFrame(bytes, format: format) }
    func finishInput() { try? connection.shutdown(.write) }

    func copyToStandardOutput() throws {
        let reader = connection.frames(format)
        while let frame = try reader.readFrame() {
            var line = Array(escapedFrame(frame).utf8)
            line.append(UInt8(ascii: "\n"))
            try line.withUnsafeBytes { try StandardStreams.writeAll($0) }
        }
    }

    func close() { try? connection.close() }
}

/// Echoes whole frames on a blocking stream connection (`--io threads`).
func echoFrames(
    _ socket: StreamSocket, format: FrameFormat, peer: UnixAddress, id: Int, showPeer: Bool, transcript: Transcript
) {
    defer {
        try? socket.close()
        transcript.closed(id)
    }
    transcript.connected(
        peer, client: id,
        identity: showPeer ? { PeerIdentity(credentials: try? socket.peerCredentials(), process: try? socket.peerProcess()) } : nil)
    let reader = socket.frames(format)
    do {
        while let frame = try reader.readFrame() {
            transcript.say("received frame \(escapedFrame(frame))", client: id)
            try socket.writeFrame(frame, format: format)
        }
        transcript.say("no data from \(peer.classicText)", client: id)
    } catch {
        if !ShutdownSignals.received.load(ordering: .acquiring) { transcript.report(error) }
    }
}

/// Echoes whole frames on an async stream connection (`--io async`).
func echoFrames(
    _ socket: AsyncStreamSocket, format: FrameFormat, peer: UnixAddress, id: Int, showPeer: Bool,
    transcript: Transcript
) async {
    defer {
        try? socket.close()
        transcript.closed(id)
    }
    socket.keepsIncomingDescriptors = false
    transcript.connected(
        peer, client: id,
        identity: showPeer ? { PeerIdentity(credentials: try? socket.peerCredentials(), process: try? socket.peerProcess()) } : nil)
    do {
        for try await frame in socket.frames(format) {
            transcript.say("received frame \(escapedFrame(frame))", client: id)
            try await socket.writeFrame(frame, format: format)
        }
        transcript.say("no data from \(peer.classicText)", client: id)
    } catch {
        if !ShutdownSignals.received.load(ordering: .acquiring) { transcript.report(error) }
    }
}
