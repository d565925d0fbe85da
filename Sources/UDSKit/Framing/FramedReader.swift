/// Reads frames of one ``FrameFormat`` from a blocking ``StreamSocket``
/// (Unix or TCP).
///
///     let reader = socket.frames(.lengthPrefixed(bytes: 4))
///     while let frame = try reader.readFrame() { handle(frame) }
///
/// The reader buffers what it has read past the current frame, so one reader
/// should do all the framed reading of its stream. It is not for use by
/// several threads at once.
///
/// A frame over the limit fails with `.frameTooLong` and closes the stream;
/// the end of the stream in the middle of a frame fails with
/// `.unexpectedEndOfStream`. Either failure is final: every later call
/// repeats it. A read that fails (a timeout) consumes nothing, so the next
/// call goes on with the same frame.
public final class FramedReader {
    private let handle: SocketHandle
    private let decoder: FrameDecoder
    private var failure: SocketError?

    /// The format frames are read in.
    public var format: FrameFormat { decoder.format }

    init(handle: SocketHandle, format: FrameFormat) {
        self.handle = handle
        decoder = FrameDecoder(format: format)
    }

    /// A reader of `socket`'s frames.
    public convenience init(_ socket: StreamSocket, format: FrameFormat) {
        self.init(handle: socket.handle, format: format)
    }

    /// Reads the next frame, without its prefix or delimiter.
    ///
    /// The corresponding C function is `recv`, called for a buffer's worth of
    /// bytes at a time, not per frame.
    /// - Parameter timeout: How long the whole frame may take; then `.timedOut`,
    ///   after which the next call goes on with the same frame.
    /// - Returns: The frame; `nil` when the stream ended between frames.
    /// - Throws: ``SocketError``: `.frameTooLong` (the stream is then closed),
    ///   `.unexpectedEndOfStream` after part of a frame, or the read's own error.
    public func readFrame(timeout: Duration? = nil) throws(SocketError) -> [UInt8]? {
        if let failure { throw failure }
        let deadline = handle.deadline(timeout, .read)
        while true {
            let step: FrameDecoder.Step
            do throws(FrameDecoder.Failure) { step = try decoder.step() } catch { throw fail(error) }
            switch step {
            case .frame(let frame):
                return frame
            case .read(let room):
                // A failed read (a timeout, say) consumed nothing: calling again resumes the frame.
                let count = try handle.blocking(.read, "read", deadline: deadline) { (fd, flags) throws(SocketError) in
                    try handle.readAttempt(fd, room, flags: flags)
                }
                if count == 0 {
                    do throws(FrameDecoder.Failure) { try decoder.finish() } catch { throw fail(error) }
                    return nil
                }
                decoder.didRead(count)
            }
        }
    }

    /// Keeps a framing failure for later calls; a frame over the limit also
    /// closes the stream, which cannot be resynchronised.
    private func fail(_ error: FrameDecoder.Failure) -> SocketError {
        let failure = handle.error("read", code: error.code)
        self.failure = failure
        if case .frameTooLong = error.code { try? handle.close() }
        return failure
    }
}

extension StreamSocket {
    /// A reader of this socket's frames in `format`; see ``FramedReader``.
    public func frames(_ format: FrameFormat) -> FramedReader { FramedReader(self, format: format) }

    /// Writes `frame` with its length prefix or delimiter, in one system call
    /// when the socket takes it all at once.
    ///
    /// The corresponding C function is `sendmsg`, with the prefix and the
    /// frame as two iovecs.
    /// - Throws: `.frameTooLong` past the format's limit (or what its prefix
    ///   can count), `.frameContainsDelimiter`, before anything is sent.
    public func writeFrame(_ frame: UnsafeRawBufferPointer, format: FrameFormat, timeout: Duration? = nil) throws(SocketError) {
        try handle.writeFrame(frame, format: format, deadline: handle.deadline(timeout, .write))
    }

    /// Writes `frame` with its length prefix or delimiter.
    public func writeFrame(_ frame: some Sequence<UInt8>, format: FrameFormat, timeout: Duration? = nil) throws(SocketError) {
        try withContiguousBytes(frame) { (buffer) throws(SocketError) in
            try handle.writeFrame(buffer, format: format, deadline: handle.deadline(timeout, .write))
        }
    }
}
