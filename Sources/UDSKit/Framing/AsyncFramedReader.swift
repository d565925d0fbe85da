/// Reads frames of one ``FrameFormat`` from an ``AsyncStreamSocket``; also
/// an `AsyncSequence` of them, which ends when the stream ends between frames.
///
///     for try await frame in socket.frames(.lines) { ... }
///
/// The parsing is ``FramedReader``'s, with the same failures: a frame over
/// the limit fails with `.frameTooLong` and closes the socket, a partial
/// frame at the end fails with `.unexpectedEndOfStream`, and either is final.
/// One reader should do all the framed reading of its socket, one task at a time.
public final class AsyncFramedReader: AsyncSequence {
    /// A frame, without its prefix or delimiter.
    public typealias Element = [UInt8]

    private let socket: AsyncStreamSocket
    private let decoder: FrameDecoder
    private var failure: SocketError?

    /// The format frames are read in.
    public var format: FrameFormat { decoder.format }

    /// A reader of `socket`'s frames.
    public init(_ socket: AsyncStreamSocket, format: FrameFormat) {
        self.socket = socket
        decoder = FrameDecoder(format: format)
    }

    /// Reads the next frame, without its prefix or delimiter, waiting for its bytes.
    /// - Parameter timeout: How long the whole frame may take; then `.timedOut`,
    ///   after which the next call goes on with the same frame.
    /// - Returns: The frame; `nil` when the stream ended between frames.
    /// - Throws: ``SocketError`` (`.frameTooLong`, `.unexpectedEndOfStream`, the
    ///   read's own error) or `CancellationError`.
    public func readFrame(timeout: Duration? = nil) async throws -> [UInt8]? {
        if let failure { throw failure }
        let deadline = socket.handle.deadline(timeout, .read)
        while true {
            let step: FrameDecoder.Step
            do throws(FrameDecoder.Failure) { step = try decoder.step() } catch { throw fail(error) }
            switch step {
            case .frame(let frame):
                return frame
            case .read(let room):
                let count = try await socket.asyncCore.perform(
                    .read, "read", deadline: deadline, exhausted: { AsyncCore.drains($0, of: room.count) }
                ) { (fd) throws(SocketError) in
                    try socket.handle.readAttempt(fd, room)
                }
                if count == 0 {
                    do throws(FrameDecoder.Failure) { try decoder.finish() } catch { throw fail(error) }
                    return nil
                }
                decoder.didRead(count)
            }
        }
    }

    private func fail(_ error: FrameDecoder.Failure) -> SocketError {
        let failure = socket.handle.error("read", code: error.code)
        self.failure = failure
        if case .frameTooLong = error.code { try? socket.close() }
        return failure
    }

    /// Iterates the frames; see ``readFrame(timeout:)``.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let reader: AsyncFramedReader

        /// The next frame; `nil` once the stream ended between frames.
        public mutating func next() async throws -> [UInt8]? { try await reader.readFrame() }
    }

    /// An iterator over the frames; every iterator reads from this reader.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(reader: self) }
}

extension AsyncStreamSocket {
    /// A reader, and sequence, of this socket's frames in `format`; see ``AsyncFramedReader``.
    public func frames(_ format: FrameFormat) -> AsyncFramedReader { AsyncFramedReader(self, format: format) }

    /// Writes `frame` with its length prefix or delimiter, waiting while the
    /// peer is not reading; one system call when the socket takes it all.
    ///
    /// The corresponding C function is `sendmsg`, with the prefix and the
    /// frame as two iovecs.
    /// - Throws: `.frameTooLong` past the format's limit (or what its prefix
    ///   can count), `.frameContainsDelimiter`, before anything is sent;
    ///   ``SocketError`` or `CancellationError` while sending.
    public func writeFrame(_ frame: UnsafeRawBufferPointer, format: FrameFormat, timeout: Duration? = nil) async throws {
        let envelope = try handle.envelope(of: frame, format: format)
        try await asyncCore.writeFrame(envelope, deadline: handle.deadline(timeout, .write)) { envelope.send($0, frame, from: $1) }
    }

    /// Writes `frame` with its length prefix or delimiter.
    public func writeFrame(_ frame: some Sequence<UInt8>, format: FrameFormat, timeout: Duration? = nil) async throws {
        let frame = Array(frame)
        let envelope = try frame.withUnsafeBytes { buffer in
            Result { () throws(SocketError) in try handle.envelope(of: buffer, format: format) }
        }.get()
        try await asyncCore.writeFrame(envelope, deadline: handle.deadline(timeout, .write)) { fd, offset in
            frame.withUnsafeBytes { envelope.send(fd, $0, from: offset) }
        }
    }
}
