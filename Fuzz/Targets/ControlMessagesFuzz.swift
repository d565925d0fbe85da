#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CUDSKit
@testable import UDSKit

/// The control-message walk of `recvmsg` on any bytes, as if the kernel had
/// filled the control buffer with them. The buffer is a heap block of exactly
/// the input's size, so AddressSanitizer reports any read past it. The walk
/// returns numbers only, so no real descriptor is touched.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControlMessages(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    // Aligned like the buffer `receive` hands the kernel.
    let control = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: MemoryLayout<cmsghdr>.alignment)
    defer { control.deallocate() }
    if let data { control.copyMemory(from: UnsafeRawBufferPointer(start: data, count: count)) }
    let parsed = ControlMessages.parse(control: UnsafeRawBufferPointer(control))
    let headerSize = cudskit_cmsg_len(0)
    require(
        parsed.descriptors.count * MemoryLayout<CInt>.size <= max(0, count - headerSize),
        "\(parsed.descriptors.count) descriptors from \(count) bytes", input: "\(Array(control))")
    if parsed.credentials != nil {
        require(count >= headerSize + cudskit_ucred_size(), "credentials from \(count) bytes", input: "\(Array(control))")
    }
    return 0
}
