#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Foundation
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

/// Lines that can come once per client or message, limited so that a flood of
/// them cannot flood the console: per key, the first line is printed at once;
/// lines with the same key within the next interval are counted, not printed,
/// and when the interval ends one summary line gives the count. While they keep
/// coming, that is one line per key per interval; after a quiet interval the
/// next one is printed at once again. Counts still pending at exit are lost.
final class RateLimitedLines: Sendable {
    static let standardError = RateLimitedLines(interval: .seconds(10)) { Console.standardError.line($0) }

    /// The interval as summaries name it: `10 s`.
    var intervalText: String { "\(interval.components.seconds) s" }

    private struct Window {
        var start: ContinuousClock.Instant
        var counted = 0
        var summary: @Sendable (Int) -> String
    }

    private let interval: Duration
    private let output: @Sendable (String) -> Void
    private let windows = Mutex<[String: Window]>([:])
    private let summaries = SummaryThread()

    init(interval: Duration, output: @escaping @Sendable (String) -> Void) {
        self.interval = interval
        self.output = output
    }

    private enum Outcome {
        case print
        case counted
        /// The first line counted in its window: its summary must be scheduled.
        case countedFirst(summaryDue: ContinuousClock.Instant)
    }

    /// Prints `line()`, or counts it if `key` was printed within the interval;
    /// `summary(count)` is the line for the lines counted.
    func line(key: String, _ line: () -> String, summary: @escaping @Sendable (Int) -> String) {
        let now = ContinuousClock.now
        let outcome: Outcome = windows.withLock { windows in
            // A window whose summary is still due counts on, however late its timer is.
            guard var window = windows[key], now < window.start + interval || window.counted > 0 else {
                windows[key] = Window(start: now, summary: summary)
                return .print
            }
            window.counted += 1
            window.summary = summary
            windows[key] = window
            return window.counted == 1 ? .countedFirst(summaryDue: window.start + interval) : .counted
        }
        switch outcome {
        case .print:
            output(line())
        case .countedFirst(let due):
            summaries.schedule(at: due) { self.summarize(key) }
        case .counted:
            break
        }
    }

    /// Prints the count of the window that ends now and opens the next one, so
    /// that a flood which goes on is summarised once per interval.
    private func summarize(_ key: String) {
        let text: String? = windows.withLock { windows in
            guard let window = windows[key], window.counted > 0 else { return nil }
            windows[key] = Window(start: .now, summary: window.summary)
            return window.summary(window.counted)
        }
        if let text { output(text) }
    }
}

/// Runs summaries when they are due, on a thread of its own: not on the
/// global executor's or libdispatch's worker threads, whose pool monitor
/// aborts the process when it cannot open a /proc file, which is exactly
/// when a server out of descriptors has something to summarise.
private final class SummaryThread: Sendable {
    private struct Due {
        var at: ContinuousClock.Instant
        var action: @Sendable () -> Void
    }
    /// Soonest first: every window lasts the same interval, so dues arrive in order.
    private let queue = Mutex<(dues: [Due], started: Bool)>(([], false))
    private let arrived = DispatchSemaphore(value: 0)

    func schedule(at due: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) {
        let start = queue.withLock { queue in
            queue.dues.append(Due(at: due, action: action))
            defer { queue.started = true }
            return !queue.started
        }
        if start { Thread.detachNewThread { self.run() } }
        arrived.signal()
    }

    private func run() {
        while true {
            arrived.wait()
            guard let due = queue.withLock({ $0.dues.first }) else { continue }
            let wait = ContinuousClock.now.duration(to: due.at)
            if wait > .zero { Thread.sleep(forTimeInterval: Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18) }
            queue.withLock { _ = $0.dues.removeFirst() }
            due.action()
        }
    }
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
