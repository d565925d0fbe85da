#if os(Linux)
import Glibc
import Testing

@testable import UDSKit

// Linux's values; glibc hides SCM_CREDENTIALS behind _GNU_SOURCE.
private let rights: CInt = 1
private let credentials: CInt = 2

/// The control-message walk on buffers the kernel would never fill, as the
/// fuzzer feeds it: it must stay inside the buffer and touch no descriptor.
@Suite("Control messages")
struct ControlMessagesTests {
    /// One Linux header (`cmsg_len`, level, type) and its payload, padded as CMSG_SPACE pads.
    private func message(length: Int? = nil, level: CInt = SOL_SOCKET, type: CInt, payload: [CInt]) -> [UInt8] {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: length ?? (16 + payload.count * 4)) { bytes += $0 }
        withUnsafeBytes(of: level) { bytes += $0 }
        withUnsafeBytes(of: type) { bytes += $0 }
        payload.forEach { value in withUnsafeBytes(of: value) { bytes += $0 } }
        while bytes.count % 8 != 0 { bytes.append(0) }
        return bytes
    }

    /// Parses `bytes` from an aligned heap block of exactly their size.
    private func parse(_ bytes: [UInt8]) -> ControlMessages.Parsed {
        let control = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
        defer { control.deallocate() }
        control.copyBytes(from: bytes)
        return ControlMessages.parse(control: UnsafeRawBufferPointer(control))
    }

    @Test func descriptorsAndCredentialsAreReturnedAsNumbers() {
        let bytes = message(type: credentials, payload: [1234, 1000, 1001])
            + message(type: rights, payload: [7, 8, 9])
        let parsed = parse(bytes)
        #expect(parsed.descriptors == [7, 8, 9])
        #expect(parsed.credentials == PeerCredentials(processID: 1234, userID: 1000, groupID: 1001))
    }

    @Test func aLengthPastTheBufferIsCutAtItsEnd() {
        // Claims eight descriptors; three fit.
        let bytes = message(length: 16 + 8 * 4, type: rights, payload: [7, 8, 9])
        #expect(parse(Array(bytes.prefix(28))).descriptors == [7, 8, 9])
    }

    @Test func aLengthShorterThanAHeaderEndsTheWalk() {
        for length in [0, 8, 15, -1] {
            let bytes = message(length: length, type: rights, payload: [7]) + message(type: rights, payload: [8])
            #expect(parse(bytes).descriptors.isEmpty, "cmsg_len \(length)")
        }
    }

    @Test func otherLevelsAndShortCredentialsAreSkipped() {
        let bytes = message(level: 41, type: rights, payload: [7])
            + message(type: credentials, payload: [1, 2])
        #expect(parse(bytes) == ControlMessages.Parsed())
    }
}
#endif
