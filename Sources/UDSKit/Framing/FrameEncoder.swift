#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

/// What goes around one frame on the wire: its length prefix before it, or
/// its delimiter after it. Checked against the format when made, so nothing
/// invalid reaches the socket; the blocking and async writers share it.
struct FrameEnvelope {
    /// The prefix or delimiter, in the order they are sent.
    private var bytes: UInt64 = 0
    private let count: Int
    /// The delimiter follows the body; a prefix precedes it.
    private let trails: Bool
    /// Prefix, body and delimiter together.
    let total: Int

    /// - Throws: `.frameTooLong` past the format's limit (or what its prefix
    ///   can count), `.frameContainsDelimiter` for a delimited format.
    init(_ format: FrameFormat, for frame: UnsafeRawBufferPointer) throws(FrameDecoder.Failure) {
        let limit = format.effectiveLimit
        guard frame.count <= limit else { throw FrameDecoder.Failure(code: .frameTooLong(length: frame.count, limit: limit)) }
        switch format.boundary {
        case .lengthPrefix(let width, let endian):
            count = width
            trails = false
            let length = UInt64(frame.count)
            withUnsafeMutableBytes(of: &bytes) { header in
                for index in 0..<width {
                    let shift = 8 * (endian == .big ? width - 1 - index : index)
                    header[index] = UInt8(truncatingIfNeeded: length >> UInt64(shift))
                }
            }
        case .delimiter(let delimiter):
            if let base = frame.baseAddress, let found = memchr(base, CInt(delimiter), frame.count) {
                throw FrameDecoder.Failure(code: .frameContainsDelimiter(delimiter, offset: UnsafeRawPointer(found) - base))
            }
            count = 1
            trails = true
            withUnsafeMutableBytes(of: &bytes) { $0[0] = delimiter }
        }
        total = count + frame.count
    }

    /// One `sendmsg` of what is left of the frame after its first `offset`
    /// bytes: envelope and body leave in one system call (two iovecs), and a
    /// partial write is continued from where it stopped.
    func send(_ fd: CInt, _ frame: UnsafeRawBufferPointer, from offset: Int, flags: CInt = 0) -> Result<Int, Errno> {
        withUnsafeBytes(of: bytes) { raw in
            let envelope = UnsafeRawBufferPointer(rebasing: raw[..<count])
            var first = trails ? frame : envelope
            var second = trails ? envelope : frame
            if offset < first.count {
                first = UnsafeRawBufferPointer(rebasing: first[offset...])
            } else {
                second = UnsafeRawBufferPointer(rebasing: second[(offset - first.count)...])
                first = UnsafeRawBufferPointer(start: nil, count: 0)
            }
            return Sys.send(fd, first, second, flags: flags)
        }
    }
}

extension Sys {
    /// Sends `first` then `second` in one `sendmsg` (a gathering write),
    /// without `SIGPIPE`, as ``send(_:_:flags:)`` does.
    static func send(
        _ fd: CInt, _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer, flags: CInt = 0
    ) -> Result<Int, Errno> {
        var vectors = (
            iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count))
        return withUnsafeMutablePointer(to: &vectors) { pair in
            pair.withMemoryRebound(to: iovec.self, capacity: 2) { vector in
                var message = msghdr()
                message.msg_iov = vector
                message.msg_iovlen = .init(2)
                return sendMessage(fd, &message, flags: flags)
            }
        }
    }
}

extension SocketHandle {
    /// The envelope of `frame`, or the error `write` reports for it.
    func envelope(of frame: UnsafeRawBufferPointer, format: FrameFormat) throws(SocketError) -> FrameEnvelope {
        do throws(FrameDecoder.Failure) {
            return try FrameEnvelope(format, for: frame)
        } catch {
            throw self.error("write", code: error.code)
        }
    }

    /// Writes one frame of `format`, continuing after partial writes.
    func writeFrame(_ frame: UnsafeRawBufferPointer, format: FrameFormat, deadline: Deadline?) throws(SocketError) {
        let envelope = try envelope(of: frame, format: format)
        var sent = 0
        while sent < envelope.total {
            sent += try blocking(.write, "write", deadline: deadline) { (fd, flags) in envelope.send(fd, frame, from: sent, flags: flags) }
        }
    }
}

extension AsyncCore {
    /// Writes one frame in `envelope`, waiting while the peer is not reading.
    /// `send(fd, offset)` makes one attempt from `offset` on (see
    /// ``FrameEnvelope/send(_:_:from:)``), so that the caller can lend an
    /// array's bytes for each attempt instead of across a suspension.
    func writeFrame(
        _ envelope: FrameEnvelope, deadline: Deadline?, _ send: (CInt, Int) -> Result<Int, Errno>
    ) async throws {
        var sent = 0
        while sent < envelope.total {
            let offered = envelope.total - sent
            sent += try await perform(.write, "write", deadline: deadline, exhausted: { AsyncCore.fills($0, of: offered) }) { fd in
                send(fd, sent)
            }
        }
    }
}
