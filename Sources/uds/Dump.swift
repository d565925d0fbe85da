#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ArgumentParser
import Synchronization

// --dump: every chunk that passes through connect, listen or relay, with its
// direction, offset and time, as hex and text (like socat -v -x) or as text
// only (like socat -v), on standard error or in a file.

struct DumpOptions: ParsableArguments {
    @Flag(help: "Show every chunk that passes (direction, offset, time) as hex and text on standard error.")
    var dump = false

    @Flag(help: "Like --dump, but as text only, for line protocols.")
    var dumpText = false

    @Option(help: "Append the dump to this file instead of standard error (implies --dump).")
    var dumpFile: String?

    /// The dump these options ask for, or nil; a file that cannot be opened
    /// ends the command.
    func makeDump() throws -> Dump? {
        guard dump || dumpText || dumpFile != nil else { return nil }
        var descriptor: CInt = 2
        if let dumpFile {
            descriptor = open(dumpFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if descriptor < 0 {
                Console.standardError.line("uds: open(\(dumpFile)): \(String(cString: strerror(errno)).lowercasedFirstLetter)")
                throw ExitCode.failure
            }
        }
        return Dump(descriptor: descriptor, textOnly: dumpText)
    }
}

/// Where dumped chunks go; one block per chunk, written whole, so the two
/// directions never interleave mid-chunk.
final class Dump: Sendable {
    enum Direction: Sendable {
        /// Into the socket (connect, listen) or from FROM to TO (relay): `>`.
        case forward
        /// Out of the socket, or from TO back to FROM: `<`.
        case backward
    }

    private let descriptor: CInt
    private let textOnly: Bool
    private let lock = Mutex(())

    init(descriptor: CInt, textOnly: Bool) {
        self.descriptor = descriptor
        self.textOnly = textOnly
    }

    /// One tap per connection: its own offsets, one per direction; forward
    /// goes from `near` to `far`.
    func tap(_ near: String, _ far: String, connection: Int? = nil) -> DumpTap {
        DumpTap(dump: self, near: near, far: far, connection: connection)
    }

    /// `> 2026-12-01T09:53:26.123456Z stdin -> ./app.sock offset 0 length 12`,
    /// then the bytes.
    func record(_ direction: Direction, label: String, offset: Int, _ bytes: UnsafeRawBufferPointer) {
        var text = direction == .forward ? "> " : "< "
        text += Self.timestamp() + " " + label + " offset \(offset) length \(bytes.count)\n"
        text += textOnly ? Self.textLines(bytes) : Self.hexLines(bytes, offset: offset)
        var block = Array(text.utf8)
        lock.withLock { _ in
            block.withUnsafeMutableBytes { buffer in
                var done = 0
                while done < buffer.count {
                    let written = write(descriptor, buffer.baseAddress! + done, buffer.count - done)
                    if written > 0 {
                        done += written
                    } else if written < 0 && errno == EINTR {
                        continue
                    } else {
                        return  // A dump that cannot be written must not stop the data.
                    }
                }
            }
        }
    }

    /// Sixteen bytes a line: the offset, the bytes in hex, and the printable ones.
    static func hexLines(_ bytes: UnsafeRawBufferPointer, offset: Int) -> String {
        var text = ""
        var start = 0
        while start < bytes.count {
            let row = bytes[start..<min(start + 16, bytes.count)]
            var hex = ""
            for (index, byte) in row.enumerated() {
                if index == 8 { hex += " " }
                hex += Self.hexByte(byte) + " "
            }
            let padding = String(repeating: " ", count: 16 * 3 + 1 - hex.count)
            let printable = String(decoding: row.map { (0x20..<0x7f).contains($0) ? $0 : UInt8(ascii: ".") }, as: UTF8.self)
            text += "  " + Self.hexOffset(offset + start) + "  " + hex + padding + " |" + printable + "|\n"
            start += 16
        }
        return text
    }

    /// The bytes as text: newlines end lines, tabs stay, other unprintable
    /// bytes are `\xNN` (and `\r` is shown), so nothing invisible passes.
    static func textLines(_ bytes: UnsafeRawBufferPointer) -> String {
        var text = ""
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\n"): text += "\n"
            case UInt8(ascii: "\t"): text += "\t"
            case UInt8(ascii: "\r"): text += "\\r"
            case UInt8(ascii: "\\"): text += "\\\\"
            case 0x20..<0x7f: text.unicodeScalars.append(UnicodeScalar(byte))
            default: text += "\\x" + hexByte(byte)
            }
        }
        if !text.hasSuffix("\n") { text += "\n" }
        return text
    }

    private static func hexByte(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 16)
        return byte < 16 ? "0" + digits : digits
    }

    private static func hexOffset(_ value: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
    }

    /// UTC with microseconds, so dumps from several processes sort together.
    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let micros = String(now.tv_nsec / 1000)
        let base = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return base + "." + String(repeating: "0", count: 6 - micros.count) + micros + "Z"
    }
}

/// One connection's view of a dump: a label and the offset of each direction.
final class DumpTap: Sendable {
    private let dump: Dump
    private let forwardLabel: String
    private let backwardLabel: String
    private let offsets = Mutex<(forward: Int, backward: Int)>((0, 0))

    fileprivate init(dump: Dump, near: String, far: String, connection: Int?) {
        self.dump = dump
        let prefix = connection.map { "connection \($0): " } ?? ""
        forwardLabel = prefix + near + " -> " + far
        backwardLabel = prefix + far + " -> " + near
    }

    func record(_ direction: Dump.Direction, _ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        let offset = offsets.withLock { offsets in
            switch direction {
            case .forward:
                defer { offsets.forward += bytes.count }
                return offsets.forward
            case .backward:
                defer { offsets.backward += bytes.count }
                return offsets.backward
            }
        }
        dump.record(direction, label: direction == .forward ? forwardLabel : backwardLabel, offset: offset, bytes)
    }

    func record(_ direction: Dump.Direction, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { record(direction, $0) }
    }
}

/// A relay side whose reads are dumped: what FROM sends goes forward, what
/// TO sends goes back.
struct DumpedStream: ByteStream {
    let inner: any ByteStream
    let tap: DumpTap
    let direction: Dump.Direction

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let count = try inner.read(into: buffer)
        tap.record(direction, UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        return count
    }

    func writeAll(_ buffer: UnsafeRawBufferPointer) throws { try inner.writeAll(buffer) }
    func closeWrite() { inner.closeWrite() }
    func close() { inner.close() }
}
