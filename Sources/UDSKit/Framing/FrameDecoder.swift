#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The framing core, written once: bytes in, whole frames out, and no I/O.
/// The blocking and async readers feed it from their sockets; each asks
/// ``step()`` for a frame, and when it gets a buffer instead, reads into it
/// and reports the count.
///
/// Bytes are read in chunks into one buffer and frames are cut from it, so a
/// read can bring many frames, or part of one. Room for a length-prefixed
/// frame is made only once its length has passed the limit; a delimited frame
/// never gets more room than the limit plus its delimiter.
final class FrameDecoder {
    /// What the reader should do next.
    enum Step {
        /// A whole frame, without its prefix or delimiter.
        case frame([UInt8])
        /// More bytes are needed: read into this buffer, then call ``didRead(_:)``.
        case read(UnsafeMutableRawBufferPointer)
    }

    /// Why the stream cannot be framed; the reader names the operation and address.
    struct Failure: Error {
        let code: SocketError.Code
    }

    let format: FrameFormat
    private var storage: UnsafeMutableRawBufferPointer
    /// The first byte not yet handed out, and one past the last byte read.
    private var start = 0
    private var end = 0
    /// Delimited: how many bytes after `start` are known to hold no
    /// delimiter, so a frame split across many reads is scanned once.
    private var scanned = 0
    /// Length-prefixed: the length of the frame whose prefix has been checked.
    private var pendingLength: Int?

    /// Large enough that one read takes many small frames.
    static let initialCapacity = 16 << 10
    /// A buffer grown for a large frame is given back once it is empty.
    static let retainedCapacity = 256 << 10
    /// Less free room than this is made larger before a read, so that a
    /// frame is not gathered a few bytes at a time.
    static let minimumRead = 4 << 10

    init(format: FrameFormat) {
        self.format = format
        storage = .allocate(byteCount: Self.initialCapacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    private var buffered: Int { end - start }

    /// The next frame from what is buffered, or where to read more.
    /// - Throws: `.frameTooLong` as soon as a frame is known to exceed the limit.
    func step() throws(Failure) -> Step {
        switch format.boundary {
        case .lengthPrefix(let bytes, let endian): return try stepLengthPrefixed(bytes, endian)
        case .delimiter(let delimiter): return try stepDelimited(delimiter)
        }
    }

    /// Records that the last read put `count` bytes (more than 0) into the buffer ``step()`` gave.
    func didRead(_ count: Int) {
        end += count
    }

    /// At the end of the stream: nothing if it ended between frames.
    /// - Throws: `.unexpectedEndOfStream` for a partial frame. A delimited
    ///   frame expected at least one more byte, its delimiter.
    func finish() throws(Failure) {
        guard buffered > 0 else { return }
        let expected: Int
        switch format.boundary {
        case .lengthPrefix(let bytes, _): expected = bytes + (pendingLength ?? 0)
        case .delimiter: expected = buffered + 1
        }
        throw Failure(code: .unexpectedEndOfStream(received: buffered, expected: expected))
    }

    private func stepLengthPrefixed(_ bytes: Int, _ endian: FrameFormat.Endianness) throws(Failure) -> Step {
        if pendingLength == nil {
            guard buffered >= bytes else { return .read(room(for: bytes, ceiling: bytes)) }
            var length: UInt64 = 0
            for index in 0..<bytes {
                let byte = storage[start + (endian == .big ? index : bytes - 1 - index)]
                length = length << 8 | UInt64(byte)
            }
            // Checked before any room is made for the frame (and so that
            // prefix plus frame cannot overflow, whatever the limit).
            guard length <= UInt64(format.maximumLength), length <= UInt64(Int.max - bytes) else {
                throw Failure(code: .frameTooLong(length: Int(exactly: length), limit: format.maximumLength))
            }
            pendingLength = Int(length)
        }
        let total = bytes + pendingLength!
        guard buffered >= total else { return .read(room(for: total, ceiling: total)) }
        let frame = Array(UnsafeRawBufferPointer(rebasing: storage[(start + bytes)..<(start + total)]))
        pendingLength = nil
        consume(total)
        return .frame(frame)
    }

    private func stepDelimited(_ delimiter: UInt8) throws(Failure) -> Step {
        // A frame of the maximum length is followed by its delimiter: no
        // further than this need be searched.
        let (sum, overflow) = format.maximumLength.addingReportingOverflow(1)
        let span = overflow ? Int.max : sum
        let searchEnd = min(buffered, span)
        // memchr is the C library's vectorised search, not a system call.
        if scanned < searchEnd,
            let found = memchr(storage.baseAddress! + start + scanned, CInt(delimiter), searchEnd - scanned)
        {
            let length = found - (storage.baseAddress! + start)
            let frame = Array(UnsafeRawBufferPointer(rebasing: storage[start..<(start + length)]))
            scanned = 0
            consume(length + 1)
            return .frame(frame)
        }
        scanned = searchEnd
        if buffered >= span { throw Failure(code: .frameTooLong(length: nil, limit: format.maximumLength)) }
        return .read(room(for: buffered + 1, ceiling: span))
    }

    /// Free room after the buffered bytes, with space for at least `needed`
    /// bytes from `start`: moves the buffered bytes to the front or grows the
    /// buffer (towards `ceiling`, the most a pending frame can need) as it must.
    private func room(for needed: Int, ceiling: Int) -> UnsafeMutableRawBufferPointer {
        // A read should have a useful amount of room, unless the pending
        // frame can need only a little more.
        let wanted = min(Self.minimumRead, ceiling - buffered)
        if storage.count - end < wanted || storage.count - start < needed {
            if start > 0 {
                // The regions may overlap; copyMemory allows that.
                storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: buffered)
                end = buffered
                start = 0
            }
            if storage.count < needed || storage.count - end < wanted {
                resize(to: max(needed, buffered + wanted, min(storage.count * 2, ceiling)))
            }
        }
        return UnsafeMutableRawBufferPointer(rebasing: storage[end...])
    }

    private func consume(_ count: Int) {
        start += count
        guard start == end else { return }
        start = 0
        end = 0
        if storage.count > Self.retainedCapacity { resize(to: Self.initialCapacity) }
    }

    private func resize(to capacity: Int) {
        let larger = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
        larger.copyMemory(from: UnsafeRawBufferPointer(rebasing: storage[start..<end]))
        storage.deallocate()
        storage = larger
        end = buffered
        start = 0
    }
}
