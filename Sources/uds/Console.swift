#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Whole lines to standard output or error, one `write` sequence per line under
/// a lock, so lines from concurrent connections never interleave mid-line, and
/// flushed at once so a pipe reader sees each line as it happens.
final class Console: Sendable {
    static let standardOutput = Console(descriptor: 1)
    static let standardError = Console(descriptor: 2)

    private let descriptor: CInt
    private let lock = Mutex(())

    private init(descriptor: CInt) {
        self.descriptor = descriptor
    }

    func line(_ text: String) {
        var bytes = Array(text.utf8)
        bytes.append(UInt8(ascii: "\n"))
        lock.withLock { _ in
            bytes.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                    if written > 0 {
                        offset += written
                    } else if written == -1 && errno == EINTR {
                        continue
                    } else {
                        return  // A closed stdout is not worth dying over.
                    }
                }
            }
        }
    }
}

/// Prints an error as `uds: <operation>(<address>): <reason>`.
func report(_ error: any Error) {
    Console.standardError.line("uds: \(error)")
}

/// The bytes as Python 3 prints them with `repr()`: `b'This is the mess'`.
/// The classic demo's transcript is made of these.
func pythonBytesLiteral(_ bytes: some Collection<UInt8>) -> String {
    let single = UInt8(ascii: "'")
    let double = UInt8(ascii: "\"")
    let quote = bytes.contains(single) && !bytes.contains(double) ? double : single
    var text = "b" + String(UnicodeScalar(quote))
    text.reserveCapacity(bytes.count + 3)
    for byte in bytes {
        switch byte {
        case quote, UInt8(ascii: "\\"):
            text.unicodeScalars.append("\\")
            text.unicodeScalars.append(UnicodeScalar(byte))
        case UInt8(ascii: "\t"): text += "\\t"
        case UInt8(ascii: "\n"): text += "\\n"
        case UInt8(ascii: "\r"): text += "\\r"
        case 0x20..<0x7f: text.unicodeScalars.append(UnicodeScalar(byte))
        default:
            let hex = String(byte, radix: 16)
            text += "\\x" + (hex.count == 1 ? "0" : "") + hex
        }
    }
    text.unicodeScalars.append(UnicodeScalar(quote))
    return text
}
