import ArgumentParser
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage
import UDSKit

/// The socket type a command uses.
enum SocketTypeOption: String, ExpressibleByArgument, CaseIterable {
    case stream
    case dgram
    case seqpacket
}

/// The socket types of the commands that move whole messages (send, recv):
/// their own type, so help lists only the values they accept.
enum MessageTypeOption: String, ExpressibleByArgument, CaseIterable {
    case dgram
    case seqpacket

    var socketType: SocketTypeOption { SocketTypeOption(rawValue: rawValue)! }
}

/// The socket types that have connections (listen).
enum ConnectionTypeOption: String, ExpressibleByArgument, CaseIterable {
    case stream
    case seqpacket

    var socketType: SocketTypeOption { SocketTypeOption(rawValue: rawValue)! }
}

/// Parses an address, turning a bad one into a one-line error.
func parseAddress(_ text: String) throws -> UnixAddress {
    do {
        return try UnixAddress(text)
    } catch {
        report(error)
        throw ExitCode.failure
    }
}

/// A file mode written in octal, as chmod takes it: `600`, `0660`.
struct FileModeOption: ExpressibleByArgument {
    let permissions: FilePermissions

    init?(argument: String) {
        guard let value = UInt16(argument, radix: 8), value <= 0o7777 else { return nil }
        permissions = FilePermissions(rawValue: CModeT(value))
    }
}

/// Raises the soft limit on open descriptors to the hard limit, as Go's runtime
/// does: a server holding many connections should not fail at 1,024. The
/// library never does this; a command owns its process and may.
func raiseDescriptorLimit() {
    var limit = rlimit()
    #if canImport(Glibc)
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE
    #endif
    guard getrlimit(resource, &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(resource, &limit)
}

/// The values a size, count or duration option accepts, and how help and
/// errors spell them. Every such option is checked in `validate()`, so a value
/// out of range ends the command with one usage line naming the option, the
/// value and the range, before any socket exists, instead of crashing later
/// (a 1 TB `--chunk` is an allocation that cannot succeed, a huge duration
/// overflows). Declare the option with `parsing: .unconditional`, so that a
/// negative value reaches the check rather than reading as a flag.
struct OptionRange<Value: Comparable & Sendable>: Sendable {
    let bounds: ClosedRange<Value>
    /// The range as help and errors print it: `1 to 67108864 bytes (64 MiB)`.
    let text: String
    /// The range as help prints it, shorter so that it wraps well at 80
    /// columns: `1 to 64 MiB`.
    let help: String

    init(bounds: ClosedRange<Value>, text: String, help: String? = nil) {
        self.bounds = bounds
        self.text = text
        self.help = help ?? text
    }

    /// Ends the command with the usage status unless `value` is in range;
    /// `given` is the value as it was typed.
    func check(_ option: String, _ value: Value, given: String) throws(ExitCode) {
        guard bounds.contains(value) else {
            Console.standardError.line("uds: \(option) \(given) is out of range: \(text)")
            throw ExitCode.validationFailure
        }
    }
}

extension OptionRange<Int> {
    /// A buffer allocated whole: read chunks, messages, writes.
    static let bufferSize = OptionRange(bounds: 1...64 << 20, text: "1 to 67108864 bytes (64 MiB)", help: "1 to 64 MiB")
    /// Bytes streamed through a buffer, never held at once.
    static let streamLength = OptionRange(bounds: 1...1 << 40, text: "1 to 1099511627776 bytes (1 TiB)", help: "1 B to 1 TiB")
    /// Event-loop threads.
    static let eventLoops = OptionRange(bounds: 1...256, text: "1 to 256")
    /// Connections open at once, each with its buffers.
    static let connections = OptionRange(bounds: 1...10_000, text: "1 to 10000")
    /// Ping-pong messages of all connections together: each connection holds
    /// three buffers of its message's size.
    static let messagesInFlight = OptionRange(
        bounds: 1...1 << 30, text: "connections times size at most 1073741824 bytes (1 GiB)")
    /// A number of things that are counted, not held.
    static let count = OptionRange(bounds: 1...Int.max, text: "at least 1")

    func check(_ option: String, _ value: Int?) throws(ExitCode) {
        if let value { try check(option, value, given: String(value)) }
    }
}

extension OptionRange<Double> {
    /// Any wait: zero up to a day. A longer one is better left out (no timeout).
    static let seconds = OptionRange(bounds: 0...86_400, text: "0 to 86400 seconds (24 hours)", help: "0 to 24h")
    /// A wait that must be longer than zero.
    static let positiveSeconds = OptionRange(
        bounds: Double.leastNonzeroMagnitude...86_400, text: "more than 0, up to 86400 seconds (24 hours)", help: "above 0, up to 24h")

    func check(_ option: String, _ value: DurationOption?) throws(ExitCode) {
        if let value { try check(option, value.seconds, given: value.text) }
    }
}

/// A duration, parsed the same way by every option that takes one: seconds
/// (`2`, `1.5`), or numbers each with a unit, largest first (`500ms`, `2s`,
/// `1m30s`, `1h`). Any number parses, negative or huge, so that `validate()`
/// can name it in its one usage line (see ``OptionRange``).
struct DurationOption: ExpressibleByArgument, CustomStringConvertible, Sendable {
    let seconds: Double
    let text: String

    init(seconds: Double) {
        self.seconds = seconds
        text = seconds.rounded() == seconds && seconds.magnitude < 1e15 ? String(Int(seconds)) : String(seconds)
    }

    init?(argument: String) {
        guard let seconds = Self.parse(argument) else { return nil }
        self.seconds = seconds
        text = argument
    }

    /// Longest suffix first, so `ms` is not read as `m` then `s`.
    private static let units: [(suffix: String, seconds: Double)] = [("ms", 0.001), ("h", 3600), ("m", 60), ("s", 1)]

    private static func parse(_ argument: String) -> Double? {
        // A bare number is seconds; any that Double reads (1e300, inf), so
        // that the range check can name it.
        if let value = Double(argument) { return value }
        var rest = Substring(argument)
        var sign = 1.0
        if rest.first == "-" {
            sign = -1
            rest = rest.dropFirst()
        }
        var total = 0.0
        var previousUnit = Double.infinity
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            guard !number.isEmpty, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            guard let unit = units.first(where: { rest.hasPrefix($0.suffix) }), unit.seconds < previousUnit else {
                return nil
            }
            rest = rest.dropFirst(unit.suffix.count)
            previousUnit = unit.seconds
            total += value * unit.seconds
        }
        return sign * total
    }

    /// As typed, with `s` added to a bare number, so a message says its unit.
    var description: String { text.last?.isLetter == true ? text : text + "s" }

    /// Clamped to what a `Duration` of nanoseconds holds, so that even an
    /// unchecked value cannot trap in the conversion.
    var duration: Duration {
        let nanoseconds = seconds * 1e9
        guard nanoseconds > 0 else { return .zero }  // NaN too
        return nanoseconds < 9e18 ? .nanoseconds(Int64(nanoseconds)) : .nanoseconds(Int64.max)
    }
}
