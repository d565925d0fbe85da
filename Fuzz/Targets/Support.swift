#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How much of the text round trip the address fuzzers assert, from
/// `UDS_FUZZ_ROUND_TRIP`: off by default, so that the fuzzers stay green while
/// `description` is being changed; `parsed` (or `1`) checks that every parsed
/// address prints as text that parses back to it; `all` also checks addresses
/// made from raw bytes.
enum RoundTrip {
    case off, parsed, all

    static let mode: RoundTrip = {
        switch getenv("UDS_FUZZ_ROUND_TRIP").map({ String(cString: $0) }) {
        case "1", "parsed": .parsed
        case "all": .all
        default: .off
        }
    }()
}

/// Stops the run with `message` and the input, so libFuzzer saves the input
/// as a crash.
func require(_ condition: Bool, _ message: @autoclosure () -> String, input: @autoclosure () -> String) {
    guard !condition else { return }
    let report = "fuzz check failed: \(message())\ninput: \(String(reflecting: input()))\n"
    _ = report.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    abort()
}
