@testable import UDSKit

/// `Endpoint(_ text:)` on any text: it throws or returns an endpoint whose
/// kind matches the text's prefix; with `UDS_FUZZ_ROUND_TRIP` set, the text
/// form parses back to the same endpoint.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEndpoint(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: count), as: UTF8.self)
    let endpoint = try? Endpoint(text)
    if let endpoint {
        _ = endpoint.description
        checkKind(endpoint, from: text)
        if RoundTrip.mode != .off { checkRoundTrip(endpoint, input: text) }
    }
    // Text without a scheme is a Unix address, parsed exactly as UnixAddress does.
    // By scalar, as the parser matches: "tcp:" and a combining mark end in one Character.
    let lowered = text.lowercased()
    if !["unix:", "abstract:", "tcp:"].contains(where: { lowered.unicodeScalars.starts(with: $0.unicodeScalars) }) {
        let address = try? UnixAddress(text)
        require(endpoint?.unixAddress == address, "differs from UnixAddress(text)", input: text)
    }
    return 0
}

private func checkKind(_ endpoint: Endpoint, from text: String) {
    switch endpoint.kind {
    case .tcp(let host, _):
        require(!host.isEmpty, "empty TCP host", input: text)
    case .unix(let address):
        require(address.kind != .unnamed, "unnamed address parsed", input: text)
    }
}

private func checkRoundTrip(_ endpoint: Endpoint, input: String) {
    let printed = endpoint.description
    do {
        let again = try Endpoint(printed)
        require(again == endpoint, "\(printed) parses to \(again.kind), not \(endpoint.kind)", input: input)
    } catch {
        require(false, "\(printed) does not parse back: \(error)", input: input)
    }
}
