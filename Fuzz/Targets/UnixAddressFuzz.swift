@testable import UDSKit

/// `UnixAddress(_ text:)` on any text: it throws or returns an address that
/// keeps its documented promises; with `UDS_FUZZ_ROUND_TRIP` set, the text
/// form parses back to the same address.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzUnixAddress(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: count))
    let text = String(decoding: bytes, as: UTF8.self)
    if let address = try? UnixAddress(text) {
        checkParsed(address, from: text)
        if RoundTrip.mode != .off { checkRoundTrip(address, input: text) }
    }
    if RoundTrip.mode == .all {
        // The same bytes as a raw path and as an abstract name.
        if let address = try? UnixAddress(pathBytes: bytes) { checkRoundTrip(address, input: text) }
        if let address = try? UnixAddress(abstractName: bytes) { checkRoundTrip(address, input: text) }
    }
    return 0
}

/// What the parser promises today, whatever `description` prints.
private func checkParsed(_ address: UnixAddress, from text: String) {
    let utf8 = Array(text.utf8)
    _ = address.description
    // By byte, as the parser decides: "@" and a combining mark are one Character.
    if utf8.first == UInt8(ascii: "@") {
        require(address.kind == .abstract, "@ text parsed as \(address.kind)", input: text)
        require(
            address.bytes.count <= UnixAddress.maximumAbstractNameLength,
            "abstract name of \(address.bytes.count) bytes accepted", input: text)
        // Escapes only shorten: each input byte yields at most one name byte.
        require(address.bytes.count <= utf8.count - 1, "name longer than its text", input: text)
    } else {
        require(address.kind == .path, "text parsed as \(address.kind)", input: text)
        // Paths take the same escapes (`\\`, `\xNN`); without a backslash the
        // bytes are the text's own.
        if !utf8.contains(UInt8(ascii: "\\")) {
            require(address.bytes == utf8, "path bytes differ from the text", input: text)
            require(address.path == text, "path property differs from the text", input: text)
        } else {
            require(address.bytes.count <= utf8.count, "path longer than its text", input: text)
        }
        require(!address.bytes.isEmpty && !address.bytes.contains(0), "empty path or NUL accepted", input: text)
        require(address.bytes.count <= UnixAddress.maximumPathLength, "path over the limit accepted", input: text)
    }
}

private func checkRoundTrip(_ address: UnixAddress, input: String) {
    let printed = String(describing: address)
    do {
        let again = try UnixAddress(printed)
        require(again == address, "\(printed) parses to \(again.kind) \(again.bytes), not \(address.kind) \(address.bytes)", input: input)
    } catch {
        require(false, "\(printed) does not parse back: \(error)", input: input)
    }
}
