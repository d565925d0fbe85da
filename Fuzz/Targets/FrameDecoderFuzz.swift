@testable import UDSKit

/// The frame decoder on any bytes, in any format: the first byte picks the
/// format and the second the limit; the rest is the stream. It is decoded
/// twice, whole and in chunks whose sizes come from the input itself, and
/// both must give the same frames and the same failure; no frame may exceed
/// the limit, and a clean end must account for every byte.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDecoder(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let data, count >= 2 else { return 0 }
    let names = ["lines", "nul", "u8", "u16be", "u16le", "u32be", "u32le", "u64be", "u64le"]
    let format = FrameFormat(names[Int(data[0]) % names.count], maximumLength: Int(data[1]) * 3)!
    let stream = Array(UnsafeBufferPointer(start: data + 2, count: count - 2))
    let whole = decode(stream, format, chunk: { _ in Int.max })
    // Chunk sizes from the stream's own bytes: 1 to 16, so splits land everywhere.
    let chunked = decode(stream, format, chunk: { offset in Int(stream[offset] & 15) + 1 })
    require(whole.frames == chunked.frames && whole.failure == chunked.failure,
        "chunking changed the outcome: \(whole) against \(chunked)", input: "\(format) \(stream)")
    for frame in whole.frames {
        require(frame.count <= format.maximumLength, "a frame of \(frame.count) bytes over \(format.maximumLength)",
            input: "\(format) \(stream)")
    }
    if whole.failure == nil {
        let envelope: Int = if case .lengthPrefix(let bytes, _) = format.boundary { bytes } else { 1 }
        let accounted = whole.frames.reduce(0) { $0 + $1.count + envelope }
        require(accounted == stream.count, "\(accounted) of \(stream.count) bytes in frames", input: "\(format) \(stream)")
    }
    return 0
}

private struct Outcome: CustomStringConvertible {
    var frames: [[UInt8]] = []
    var failure: SocketError.Code?
    var description: String { "\(frames.count) frames, \(failure.map { "\($0)" } ?? "a clean end")" }
}

private func decode(_ stream: [UInt8], _ format: FrameFormat, chunk: (Int) -> Int) -> Outcome {
    let decoder = FrameDecoder(format: format)
    var outcome = Outcome()
    var offset = 0
    do throws(FrameDecoder.Failure) {
        while true {
            switch try decoder.step() {
            case .frame(let frame):
                outcome.frames.append(frame)
            case .read(let room):
                require(!room.isEmpty, "no room to read into", input: "\(format) \(stream)")
                if offset == stream.count {
                    try decoder.finish()
                    return outcome
                }
                let count = min(room.count, stream.count - offset, chunk(offset))
                room.copyBytes(from: stream[offset..<(offset + count)])
                offset += count
                decoder.didRead(count)
            }
        }
    } catch {
        outcome.failure = error.code
        return outcome
    }
}
