/// How messages are cut out of a byte stream: a length prefix before each
/// frame, or a delimiter byte after it.
///
///     let format = FrameFormat.lengthPrefixed(bytes: 4, endian: .big)   // struct.pack('>I', len) + body
///     try socket.writeFrame(Array("hello".utf8), format: format)
///     let reader = socket.frames(format)
///     while let frame = try reader.readFrame() { ... }
///
/// Every format has a ``maximumLength``: a reader refuses a longer frame with
/// ``SocketError/Code/frameTooLong(length:limit:)`` before it allocates room
/// for it (a length prefix is checked as soon as it arrives), and then closes
/// the stream, since what follows cannot be trusted. A writer refuses one too,
/// so this side never sends what it would refuse itself.
///
/// Delimited formats: the delimiter is not part of the frame, and a frame that
/// contains it cannot be written (``SocketError/Code/frameContainsDelimiter(_:offset:)``).
/// ``lines`` ends frames at `\n` alone: a `\r` before it stays in the frame,
/// so that every frame written reads back byte for byte; a CRLF protocol
/// strips it itself.
public struct FrameFormat: Hashable, Sendable, CustomStringConvertible {
    /// The byte order of a length prefix.
    public enum Endianness: Hashable, Sendable {
        /// Most significant byte first (network order; Python's `>`).
        case big
        /// Least significant byte first (Python's `<`).
        case little
    }

    /// Where one frame ends and the next begins.
    public enum Boundary: Hashable, Sendable {
        /// An unsigned length of `bytes` bytes (1, 2, 4 or 8) before each frame;
        /// it counts the frame's bytes, not its own.
        case lengthPrefix(bytes: Int, endian: Endianness)
        /// This byte after each frame.
        case delimiter(UInt8)
    }

    /// Where frames end.
    public let boundary: Boundary
    /// The longest frame, in bytes (without prefix or delimiter), that is
    /// read or written.
    public var maximumLength: Int

    /// The limit unless one is given: 8 MiB, as tokio-util's codecs have.
    public static let defaultMaximumLength = 8 << 20

    /// A format with this boundary and limit.
    /// - Precondition: a length prefix is 1, 2, 4 or 8 bytes; `maximumLength` is not negative.
    public init(boundary: Boundary, maximumLength: Int = FrameFormat.defaultMaximumLength) {
        if case .lengthPrefix(let bytes, _) = boundary {
            precondition([1, 2, 4, 8].contains(bytes), "a length prefix is 1, 2, 4 or 8 bytes, not \(bytes)")
        }
        precondition(maximumLength >= 0, "the maximum frame length cannot be negative")
        self.boundary = boundary
        self.maximumLength = maximumLength
    }

    /// Frames after an unsigned length of `bytes` bytes (1, 2, 4 or 8).
    public static func lengthPrefixed(
        bytes: Int, endian: Endianness = .big, maximumLength: Int = defaultMaximumLength
    ) -> FrameFormat {
        FrameFormat(boundary: .lengthPrefix(bytes: bytes, endian: endian), maximumLength: maximumLength)
    }

    /// Frames each followed by `delimiter`.
    public static func delimited(by delimiter: UInt8, maximumLength: Int = defaultMaximumLength) -> FrameFormat {
        FrameFormat(boundary: .delimiter(delimiter), maximumLength: maximumLength)
    }

    /// Lines: frames each followed by `\n`, which is not part of the frame.
    public static var lines: FrameFormat { delimited(by: UInt8(ascii: "\n")) }

    /// Frames each followed by a NUL byte, as `find -print0` writes names.
    public static var nul: FrameFormat { delimited(by: 0) }

    /// The same format with another limit.
    public func maximumLength(_ limit: Int) -> FrameFormat {
        FrameFormat(boundary: boundary, maximumLength: limit)
    }

    /// A format by the name ``description`` gives it: `lines`, `nul`, `u8`,
    /// `u16be`, `u16le`, `u32be`, `u32le`, `u64be` or `u64le`; `nil` for any other.
    public init?(_ name: String, maximumLength: Int = FrameFormat.defaultMaximumLength) {
        guard maximumLength >= 0 else { return nil }
        switch name {
        case "lines": self = .lines.maximumLength(maximumLength)
        case "nul": self = .nul.maximumLength(maximumLength)
        case "u8": self = .lengthPrefixed(bytes: 1, maximumLength: maximumLength)
        default:
            let endians: [(String, Endianness)] = [("be", .big), ("le", .little)]
            for bits in [16, 32, 64] {
                for (suffix, endian) in endians where name == "u\(bits)\(suffix)" {
                    self = .lengthPrefixed(bytes: bits / 8, endian: endian, maximumLength: maximumLength)
                    return
                }
            }
            return nil
        }
    }

    /// The format's short name: `lines`, `nul`, `u8`, `u32be` and so on;
    /// another delimiter reads `delimiter 0xNN`.
    public var description: String {
        switch boundary {
        case .delimiter(UInt8(ascii: "\n")): return "lines"
        case .delimiter(0): return "nul"
        case .delimiter(let byte): return "delimiter 0x\(byte < 16 ? "0" : "")\(String(byte, radix: 16))"
        case .lengthPrefix(1, _): return "u8"
        case .lengthPrefix(let bytes, let endian): return "u\(bytes * 8)\(endian == .big ? "be" : "le")"
        }
    }

    /// The longest frame this format can carry: the limit, or less if the
    /// prefix cannot count that far.
    var effectiveLimit: Int {
        guard case .lengthPrefix(let bytes, _) = boundary, bytes < 8 else { return maximumLength }
        return min(maximumLength, (1 << (bytes * 8)) - 1)
    }
}
