import Foundation
import Glibc
import Synchronization
import Testing
@testable import UDSKit

// Frames over real socket pairs, blocking and async, for every format. The
// expected wire bytes come from `reference(_:_:)`, written here from the
// formats' definitions, so the library's encoder is checked, not trusted.

private let allFormats = ["lines", "nul", "u8", "u16be", "u16le", "u32be", "u32le", "u64be", "u64le"]
    .map { FrameFormat($0)! }

/// The bytes of `frame` on the wire, by the definition of `format`.
private func reference(_ frame: [UInt8], _ format: FrameFormat) -> [UInt8] {
    switch format.boundary {
    case .lengthPrefix(let bytes, let endian):
        var header = (0..<bytes).map { UInt8(truncatingIfNeeded: UInt64(frame.count) >> UInt64(8 * $0)) }
        if endian == .big { header.reverse() }
        return header + frame
    case .delimiter(let delimiter):
        return frame + [delimiter]
    }
}

private func pattern(_ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ ($0 >> 8)) }
}

/// Frames of many sizes that `format` can carry: empty, small, every byte
/// value, and (where the prefix allows) larger than the socket's buffer.
private func samples(for format: FrameFormat) -> [[UInt8]] {
    let all: [[UInt8]] = [
        [], Array("a".utf8), Array("hello, world".utf8), Array(0...255), Array(#"{"id":1,"ok":true}"#.utf8),
        pattern(3000), [], pattern(70_000), pattern(300_000),
    ]
    return all.compactMap { frame in
        var frame = frame
        if case .delimiter(let delimiter) = format.boundary { frame.removeAll { $0 == delimiter } }
        return frame.count <= format.effectiveLimit ? frame : nil
    }
}

/// Runs blocking `body` on a thread of its own, so that no thread of Swift
/// concurrency's small pool waits in a socket call; `value()` suspends.
private final class OnThread<T: Sendable>: Sendable {
    private struct State {
        var result: Result<T, any Error>?
        var waiter: CheckedContinuation<T, any Error>?
    }
    private let state = Mutex(State())

    init(_ body: @escaping @Sendable () throws -> T) {
        Thread.detachNewThread { [self] in
            let result = Result { try body() }
            let waiter = state.withLock { state in
                state.result = result
                return state.waiter
            }
            waiter?.resume(with: result)
        }
    }

    func value() async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let result = state.withLock { state in
                if state.result == nil { state.waiter = continuation }
                return state.result
            }
            if let result { continuation.resume(with: result) }
        }
    }
}

/// Runs blocking `body` on a thread of its own and awaits its result.
private func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await OnThread(body).value()
}

/// Whether the peer of `socket` has closed: a read ends or is reset.
private func peerClosed(_ socket: StreamSocket) -> Bool {
    try? socket.setReadTimeout(.seconds(5))
    do {
        return try socket.read(upTo: 16).isEmpty
    } catch {
        return error.errno == .connectionReset
    }
}

private func frameTooLongLimit(_ error: SocketError) -> Int? {
    if case .frameTooLong(_, let limit) = error.code { return limit }
    return nil
}

@Suite("Framing", .timeLimit(.minutes(1)))
struct FramingTests {
    @Test("frames written and read back, blocking", arguments: allFormats)
    func roundTripBlocking(format: FrameFormat) async throws {
        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        let frames = samples(for: format)
        let sending = OnThread {
            for frame in frames { try writer.writeFrame(frame, format: format) }
            try writer.shutdown(.write)
        }
        let (received, again) = try await blocking { () throws -> ([[UInt8]], [UInt8]?) in
            let frameReader = reader.frames(format)
            var received: [[UInt8]] = []
            while let frame = try frameReader.readFrame() { received.append(frame) }
            return (received, try frameReader.readFrame())
        }
        try await sending.value()
        #expect(received == frames)
        #expect(again == nil, "the end stays the end")
    }

    @Test("frames written and read back, async, as a sequence", arguments: allFormats)
    func roundTripAsync(format: FrameFormat) async throws {
        let (writer, reader) = try AsyncStreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        let frames = samples(for: format)
        async let sent: Void = {
            for frame in frames { try await writer.writeFrame(frame, format: format) }
            try writer.shutdown(.write)
        }()
        var received: [[UInt8]] = []
        for try await frame in reader.frames(format) { received.append(frame) }
        try await sent
        #expect(received == frames)
    }

    @Test("the bytes on the wire are the format's, prefix and delimiter included", arguments: allFormats)
    func wireBytes(format: FrameFormat) throws {
        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        let frame = Array("wire".utf8) + [0x01, 0xFF]
        try writer.writeFrame(frame, format: format)
        try frame.withUnsafeBytes { try writer.writeFrame($0, format: format) }
        let expected = reference(frame, format) + reference(frame, format)
        #expect(try reader.readExactly(expected.count) == expected)
    }

    @Test("a frame that arrives a byte at a time, blocking and async", arguments: allFormats)
    func splitAcrossReads(format: FrameFormat) async throws {
        let frames = [Array("split across reads".utf8), [], Array("x".utf8)]
        let wire = frames.flatMap { reference($0, format) }
        let trickle: @Sendable (StreamSocket) throws -> Void = { socket in
            for byte in wire {
                try socket.writeAll([byte])
                usleep(300)
            }
            try socket.shutdown(.write)
        }

        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        let sending = OnThread { try trickle(writer) }
        let received = try await blocking { () throws -> [[UInt8]] in
            let frameReader = reader.frames(format)
            var received: [[UInt8]] = []
            while let frame = try frameReader.readFrame() { received.append(frame) }
            return received
        }
        try await sending.value()
        #expect(received == frames)

        let (asyncWriter, asyncReaderSide) = try StreamSocket.makePair()
        let asyncReader = try AsyncStreamSocket(asyncReaderSide)
        defer { try? asyncWriter.close(); try? asyncReader.close() }
        let asyncSending = OnThread { try trickle(asyncWriter) }
        var asyncReceived: [[UInt8]] = []
        for try await frame in asyncReader.frames(format) { asyncReceived.append(frame) }
        try await asyncSending.value()
        #expect(asyncReceived == frames)
    }

    @Test("many frames in one write are each handed out", arguments: allFormats)
    func manyFramesInOneWrite(format: FrameFormat) async throws {
        let frames = (0..<2000).map { index in Array("frame \(index)".utf8) }
        let wire = frames.flatMap { reference($0, format) }

        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        let sending = OnThread {
            try writer.writeAll(wire)
            try writer.shutdown(.write)
        }
        let received = try await blocking { () throws -> [[UInt8]] in
            let frameReader = reader.frames(format)
            var received: [[UInt8]] = []
            while let frame = try frameReader.readFrame() { received.append(frame) }
            return received
        }
        try await sending.value()
        #expect(received == frames)

        let (asyncWriter, asyncReader) = try AsyncStreamSocket.makePair()
        defer { try? asyncWriter.close(); try? asyncReader.close() }
        async let sent: Void = {
            try await asyncWriter.writeAll(wire)
            try asyncWriter.shutdown(.write)
        }()
        var asyncFrames: [[UInt8]] = []
        for try await frame in asyncReader.frames(format) { asyncFrames.append(frame) }
        try await sent
        #expect(asyncFrames == frames)
    }

    @Test("a frame over the limit is refused with its length and the limit, and the stream is closed", arguments: allFormats)
    func oversizeFrameClosesTheStream(format: FrameFormat) async throws {
        let limited = format.maximumLength(100)
        let frame = pattern(101).map { $0 == 0 || $0 == 10 ? 0x41 : $0 }
        var wire = reference(frame, limited)
        // A length prefix alone must be enough to refuse the frame: no body is sent.
        if case .lengthPrefix(let bytes, _) = limited.boundary { wire = Array(wire.prefix(bytes)) }
        let expectedLength: Int? = if case .lengthPrefix = limited.boundary { 101 } else { nil }

        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        try writer.writeAll(Array(reference(Array("fine".utf8), limited)) + wire)
        let frameReader = reader.frames(limited)
        #expect(try frameReader.readFrame() == Array("fine".utf8))
        let error = #expect(throws: SocketError.self) { try frameReader.readFrame() }
        #expect(error?.code == .frameTooLong(length: expectedLength, limit: 100))
        #expect(error?.description.contains("100") == true)
        #expect(peerClosed(writer), "the stream is closed, not resynchronised")
        let again = #expect(throws: SocketError.self) { try frameReader.readFrame() }
        #expect(again.map(frameTooLongLimit) == 100, "the failure is final")

        let (asyncWriter, asyncReaderSide) = try StreamSocket.makePair()
        let asyncReader = try AsyncStreamSocket(asyncReaderSide)
        defer { try? asyncWriter.close(); try? asyncReader.close() }
        try asyncWriter.writeAll(wire)
        let frames = asyncReader.frames(limited)
        await #expect { try await frames.readFrame() } throws: { error in
            (error as? SocketError)?.code == .frameTooLong(length: expectedLength, limit: 100)
        }
        #expect(peerClosed(asyncWriter))
    }

    @Test("a frame of exactly the limit is accepted", arguments: allFormats)
    func frameAtTheLimit(format: FrameFormat) throws {
        let limited = format.maximumLength(200)
        let frame = pattern(min(200, limited.effectiveLimit)).map { $0 == 0 || $0 == 10 ? 0x41 : $0 }
        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        try writer.writeFrame(frame, format: limited)
        #expect(try reader.frames(limited).readFrame() == frame)
    }

    @Test("a prefix beyond any limit is refused without room made for it")
    func hugePrefix() throws {
        for (prefix, length) in [([UInt8](repeating: 0xFF, count: 8), nil), ([0x40] + [UInt8](repeating: 0, count: 7), 1 << 62)] {
            let (writer, reader) = try StreamSocket.makePair()
            defer { try? writer.close(); try? reader.close() }
            try writer.writeAll(prefix)
            let error = #expect(throws: SocketError.self) { try reader.frames(FrameFormat("u64be")!).readFrame() }
            #expect(error?.code == .frameTooLong(length: length, limit: FrameFormat.defaultMaximumLength))
        }
    }

    @Test("a read that times out mid-frame loses nothing: the next call completes the frame", arguments: allFormats)
    func timeoutMidFrame(format: FrameFormat) async throws {
        let frame = Array("resumed after a timeout".utf8)
        let wire = reference(frame, format)
        let half = wire.count / 2

        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        try reader.setReadTimeout(.milliseconds(30))
        let frameReader = reader.frames(format)
        try writer.writeAll(wire[..<half])
        let error = #expect(throws: SocketError.self) { try frameReader.readFrame() }
        #expect(error?.code == .timedOut)
        try writer.writeAll(wire[half...])
        #expect(try frameReader.readFrame() == frame)

        let (asyncWriter, asyncReader) = try AsyncStreamSocket.makePair()
        defer { try? asyncWriter.close(); try? asyncReader.close() }
        let frames = asyncReader.frames(format)
        try await asyncWriter.writeAll(Array(wire[..<half]))
        await #expect { try await frames.readFrame(timeout: .milliseconds(30)) } throws: {
            ($0 as? SocketError)?.code == .timedOut
        }
        try await asyncWriter.writeAll(Array(wire[half...]))
        #expect(try await frames.readFrame(timeout: .seconds(5)) == frame)
    }

    @Test("the end of the stream inside a frame is an error; between frames, the end", arguments: allFormats)
    func partialFrameAtTheEnd(format: FrameFormat) async throws {
        let whole = reference(Array("whole".utf8), format)
        let partial = Array(reference(Array("partial".utf8), format).dropLast(2))

        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        try writer.writeAll(whole + partial)
        try writer.shutdown(.write)
        let frameReader = reader.frames(format)
        #expect(try frameReader.readFrame() == Array("whole".utf8))
        let error = #expect(throws: SocketError.self) { try frameReader.readFrame() }
        guard case .unexpectedEndOfStream(let received, let expected)? = error?.code else {
            Issue.record("expected unexpectedEndOfStream, got \(String(describing: error))")
            return
        }
        #expect(received == partial.count)
        #expect(expected > received)

        let (asyncWriter, asyncReader) = try AsyncStreamSocket.makePair()
        defer { try? asyncWriter.close(); try? asyncReader.close() }
        try await asyncWriter.writeAll(whole + partial)
        try asyncWriter.shutdown(.write)
        var frames: [[UInt8]] = []
        await #expect {
            for try await frame in asyncReader.frames(format) { frames.append(frame) }
        } throws: { error in
            if case .unexpectedEndOfStream? = (error as? SocketError)?.code { return true }
            return false
        }
        #expect(frames == [Array("whole".utf8)])
    }

    @Test("a frame the format cannot carry is refused before anything is sent")
    func writeRefusals() async throws {
        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        let line = #expect(throws: SocketError.self) { try writer.writeFrame(Array("two\nlines".utf8), format: .lines) }
        #expect(line?.code == .frameContainsDelimiter(UInt8(ascii: "\n"), offset: 3))
        let nul = #expect(throws: SocketError.self) { try writer.writeFrame([1, 0], format: .nul) }
        #expect(nul?.code == .frameContainsDelimiter(0, offset: 1))
        let u8 = #expect(throws: SocketError.self) { try writer.writeFrame(pattern(256), format: FrameFormat("u8")!) }
        #expect(u8?.code == .frameTooLong(length: 256, limit: 255))
        let limited = #expect(throws: SocketError.self) {
            try writer.writeFrame(pattern(11), format: .lengthPrefixed(bytes: 4, maximumLength: 10))
        }
        #expect(limited?.code == .frameTooLong(length: 11, limit: 10))

        let (asyncWriter, asyncReader) = try AsyncStreamSocket.makePair()
        defer { try? asyncWriter.close(); try? asyncReader.close() }
        await #expect {
            try await asyncWriter.writeFrame(Array("a\nb".utf8), format: .lines)
        } throws: { ($0 as? SocketError)?.code == .frameContainsDelimiter(10, offset: 1) }

        // Nothing of the refused frames reached the peer.
        try writer.shutdown(.write)
        #expect(try reader.read(upTo: 64).isEmpty)
    }

    @Test("frames over a TCP connection")
    func overTCP() async throws {
        let listener = try StreamListener.bind(to: Endpoint("tcp:0"))
        defer { try? listener.close() }
        let endpoint = try listener.localEndpoint()
        let format = FrameFormat("u32be")!
        let server = OnThread { () throws -> [[UInt8]] in
            let (connection, _) = try listener.accept()
            defer { try? connection.close() }
            let reader = connection.frames(format)
            var frames: [[UInt8]] = []
            while let frame = try reader.readFrame() {
                frames.append(frame)
                try connection.writeFrame(frame.reversed(), format: format)
            }
            return frames
        }
        let frames = samples(for: format)
        let (replies, end) = try await blocking { () throws -> ([[UInt8]], [UInt8]?) in
            let client = try StreamSocket.connect(to: endpoint)
            defer { try? client.close() }
            let reader = client.frames(format)
            var replies: [[UInt8]] = []
            for frame in frames {
                try client.writeFrame(frame, format: format)
                replies.append(try reader.readFrame() ?? [])
            }
            try client.shutdown(.write)
            return (replies, try reader.readFrame())
        }
        #expect(replies == frames.map { $0.reversed() })
        #expect(try await server.value() == frames)
        #expect(end == nil)
    }

    @Test("the decoder cuts the same frames from a stream however it is chunked", arguments: allFormats)
    func randomChunking(format: FrameFormat) throws {
        var random = SeededGenerator(seed: 11)
        let frames = samples(for: format) + (0..<300).map { _ in pattern(Int.random(in: 0...40, using: &random)) }
            .map { frame in frame.map { $0 == 0 || $0 == 10 ? 0x20 : $0 } }
        let wire = frames.flatMap { reference($0, format) }
        for _ in 0..<20 {
            let decoder = FrameDecoder(format: format)
            var offset = 0
            var received: [[UInt8]] = []
            decoding: while true {
                switch try decoder.step() {
                case .frame(let frame):
                    received.append(frame)
                case .read(let room):
                    if offset == wire.count { break decoding }
                    let count = min(room.count, wire.count - offset, Int.random(in: 1...5000, using: &random))
                    room.copyBytes(from: wire[offset..<(offset + count)])
                    offset += count
                    decoder.didRead(count)
                }
            }
            try decoder.finish()
            #expect(received == frames)
        }
    }

    @Test("a write cut anywhere, inside the prefix or the body, goes on from there", arguments: allFormats)
    func writeResumesAtEveryOffset(format: FrameFormat) throws {
        let frame = Array("cut anywhere".utf8)
        let wire = reference(frame, format)
        let (writer, reader) = try StreamSocket.makePair()
        defer { try? writer.close(); try? reader.close() }
        try frame.withUnsafeBytes { body in
            let envelope = try FrameEnvelope(format, for: body)
            #expect(envelope.total == wire.count)
            for offset in 0..<wire.count {
                let sent = try envelope.send(writer.descriptor.rawValue, body, from: offset).get()
                #expect(sent == wire.count - offset)
                #expect(try reader.readExactly(sent) == Array(wire[offset...]), "from offset \(offset)")
            }
        }
    }

    @Test("any bytes give frames within the limit, or a typed failure (seeded)", arguments: allFormats)
    func arbitraryBytes(format: FrameFormat) {
        var random = SeededGenerator(seed: 29)
        for round in 0..<200 {
            let limited = format.maximumLength(Int.random(in: 0...300, using: &random))
            // Mostly small values, so length prefixes often fit and delimiters often appear.
            let wire = (0..<Int.random(in: 0...2000, using: &random)).map { _ in
                UInt8(Int.random(in: 0...3, using: &random) == 0 ? Int.random(in: 0...255, using: &random) : Int.random(in: 0...12, using: &random))
            }
            let decoder = FrameDecoder(format: limited)
            var offset = 0
            let envelope: Int = if case .lengthPrefix(let bytes, _) = limited.boundary { bytes } else { 1 }
            var overhead = 0
            var consumed = 0
            do throws(FrameDecoder.Failure) {
                decoding: while true {
                    switch try decoder.step() {
                    case .frame(let frame):
                        #expect(frame.count <= limited.maximumLength, "round \(round)")
                        consumed += frame.count
                        overhead += envelope
                    case .read(let room):
                        #expect(!room.isEmpty)
                        if offset == wire.count { break decoding }
                        let count = min(room.count, wire.count - offset, Int.random(in: 1...700, using: &random))
                        room.copyBytes(from: wire[offset..<(offset + count)])
                        offset += count
                        decoder.didRead(count)
                    }
                }
                try decoder.finish()
                #expect(consumed + overhead == wire.count, "round \(round): every byte belongs to a frame")
            } catch {
                switch error.code {
                case .frameTooLong(_, let limit): #expect(limit == limited.maximumLength)
                case .unexpectedEndOfStream(let received, let expected): #expect(received < expected)
                default: Issue.record("round \(round): \(error.code)")
                }
            }
        }
    }

    @Test("format names read back as they are written")
    func formatNames() {
        for format in allFormats { #expect(FrameFormat(format.description) == format) }
        #expect(FrameFormat("u24be") == nil)
        #expect(FrameFormat("u32") == nil)
        #expect(FrameFormat("lines", maximumLength: 5)?.maximumLength == 5)
        #expect(FrameFormat.lengthPrefixed(bytes: 2, endian: .little).description == "u16le")
        #expect(FrameFormat.delimited(by: 0x1E).description == "delimiter 0x1e")
    }
}
