#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CUDSKit
import SystemPackage

/// `sendmsg`/`recvmsg` with ancillary data: descriptors (`SCM_RIGHTS`) and,
/// on Linux, sender credentials (`SCM_CREDENTIALS`).
enum ControlMessages {
    /// The kernel's limit of descriptors in one message (Linux `SCM_MAX_FD`).
    static let maximumDescriptors = 253

    private static let descriptorSize = MemoryLayout<CInt>.size

    /// Room for `descriptors` descriptors and, if asked and the platform has
    /// them, credentials.
    static func controlSpace(descriptors: Int, credentials: Bool) -> Int {
        var space = descriptors > 0 ? cudskit_cmsg_space(descriptors * descriptorSize) : 0
        if credentials && cudskit_ucred_size() > 0 { space += cudskit_cmsg_space(cudskit_ucred_size()) }
        return space
    }

    /// Sends `buffer` with `descriptors` attached, to `address` if given.
    static func send(
        _ fd: CInt, _ buffer: UnsafeRawBufferPointer, descriptors: [CInt], to address: UnixAddress?, flags: CInt = 0
    ) -> Result<Int, Errno> {
        let payload = descriptors.count * descriptorSize
        // Darwin requires a null control pointer when there is nothing to send.
        let space = descriptors.isEmpty ? 0 : cudskit_cmsg_space(payload)
        return withUnsafeTemporaryAllocation(byteCount: max(space, 1), alignment: MemoryLayout<cmsghdr>.alignment) { control in
            control.initializeMemory(as: UInt8.self, repeating: 0)
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: buffer.baseAddress), iov_len: buffer.count)
            var message = msghdr()
            return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                message.msg_iov = vectorPointer
                message.msg_iovlen = 1
                if space > 0 {
                    message.msg_control = control.baseAddress
                    message.msg_controllen = .init(space)
                    let header = cudskit_cmsg_firsthdr(&message)!
                    header.pointee.cmsg_level = SOL_SOCKET
                    header.pointee.cmsg_type = cudskit_scm_rights
                    header.pointee.cmsg_len = .init(cudskit_cmsg_len(payload))
                    let data = UnsafeMutableRawPointer(cudskit_cmsg_data(header)!)
                    descriptors.withUnsafeBytes { data.copyMemory(from: $0.baseAddress!, byteCount: payload) }
                }
                guard let address else { return Sys.sendMessage(fd, &message, flags: flags) }
                return address.withSockaddr { name, length in
                    message.msg_name = UnsafeMutableRawPointer(mutating: name)
                    message.msg_namelen = length
                    return Sys.sendMessage(fd, &message, flags: flags)
                }
            }
        }
    }

    /// What one `recvmsg` with room for control messages brought.
    struct Received {
        var count: Int
        var flags: CInt
        var sender: UnixAddress?
        var descriptors: [CInt]
        var credentials: PeerCredentials?
    }

    /// Receives into `buffer` with room for `descriptorCapacity` descriptors;
    /// `messages` is false for stream sockets.
    /// Received descriptors are close-on-exec (atomically on Linux).
    static func receive(
        _ fd: CInt, into buffer: UnsafeMutableRawBufferPointer,
        descriptorCapacity: Int, credentials: Bool, wantSender: Bool, messages: Bool, flags: CInt = 0
    ) -> Result<Received, Errno> {
        let space = controlSpace(descriptors: descriptorCapacity, credentials: credentials)
        return withUnsafeTemporaryAllocation(byteCount: max(space, 1), alignment: MemoryLayout<cmsghdr>.alignment) { control in
            var storage = sockaddr_un()
            var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
            var message = msghdr()
            let result: Result<Int, Errno> = withUnsafeMutablePointer(to: &storage) { name in
                withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    if wantSender {
                        message.msg_name = UnsafeMutableRawPointer(name)
                        message.msg_namelen = socklen_t(MemoryLayout<sockaddr_un>.size)
                    }
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    if space > 0 {
                        message.msg_control = control.baseAddress
                        message.msg_controllen = .init(space)
                    }
                    // MSG_TRUNC asks for a datagram's full length; on a stream it is not wanted.
                    let lengthFlag = messages ? Sys.reportFullLengthFlag : 0
                    return Sys.receiveMessage(fd, &message, flags: flags | lengthFlag | cudskit_msg_cmsg_cloexec)
                }
            }
            let count: Int
            switch result {
            case .success(let received): count = received
            case .failure(let errno): return .failure(errno)
            }
            var received = Received(
                count: count, flags: message.msg_flags,
                sender: wantSender ? UnixAddress(storage: storage, length: message.msg_namelen) : nil,
                descriptors: [], credentials: nil)
            if space > 0 && message.msg_controllen > 0 {
                let used = UnsafeRawBufferPointer(rebasing: control[..<min(Int(message.msg_controllen), space)])
                let found = parse(control: used)
                // Marked here, not in `parse`: the numbers are only descriptors
                // when the kernel put them there.
                found.descriptors.forEach(Sys.markCloseOnExec)
                received.descriptors = found.descriptors
                received.credentials = found.credentials
            }
            return .success(received)
        }
    }

    /// What the control messages of one message carried.
    struct Parsed: Equatable {
        var descriptors: [CInt] = []
        var credentials: PeerCredentials?
    }

    /// Walks the control messages in `control`, the part of a `recvmsg`
    /// control buffer that the kernel filled (`msg_controllen` bytes), which
    /// must be aligned for `cmsghdr`.
    ///
    /// Returns numbers and touches no descriptor, so that any bytes can be fed
    /// to it (the fuzzer does). A header whose length is shorter than a header
    /// ends the walk, and a payload is cut at the end of the buffer: glibc's
    /// `CMSG_NXTHDR` checks only where the next header lies, and Darwin's
    /// returns the same header again for a length of 0.
    static func parse(control: UnsafeRawBufferPointer) -> Parsed {
        var parsed = Parsed()
        guard let base = control.baseAddress else { return parsed }
        precondition(Int(bitPattern: base) % MemoryLayout<cmsghdr>.alignment == 0, "control buffer is not aligned")
        var message = msghdr()
        message.msg_control = UnsafeMutableRawPointer(mutating: base)
        message.msg_controllen = .init(control.count)
        let end = base + control.count
        var header = cudskit_cmsg_firsthdr(&message)
        while let current = header {
            let length = Int(current.pointee.cmsg_len)
            guard length >= cudskit_cmsg_len(0) else { break }
            let data = UnsafeRawPointer(cudskit_cmsg_data(current)!)
            let payload = min(length - cudskit_cmsg_len(0), max(0, end - data))
            if current.pointee.cmsg_level == SOL_SOCKET {
                if current.pointee.cmsg_type == cudskit_scm_rights {
                    for index in 0..<(payload / descriptorSize) {
                        parsed.descriptors.append(data.loadUnaligned(fromByteOffset: index * descriptorSize, as: CInt.self))
                    }
                } else if cudskit_scm_credentials != 0 && current.pointee.cmsg_type == cudskit_scm_credentials
                    && payload >= cudskit_ucred_size()
                {
                    var pid: pid_t = 0
                    var uid: uid_t = 0
                    var gid: gid_t = 0
                    cudskit_read_ucred(data, &pid, &uid, &gid)
                    parsed.credentials = PeerCredentials(processID: pid, userID: uid, groupID: gid)
                }
            }
            header = cudskit_cmsg_nxthdr(&message, current)
        }
        return parsed
    }
}
