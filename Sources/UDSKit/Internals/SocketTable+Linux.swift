#if os(Linux)
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemPackage

// The kernel's table of Unix sockets, Linux only: NETLINK_SOCK_DIAG
// (`unix_diag`, linux/unix_diag.h) first, `/proc/net/unix` when the diag
// module is missing, and `/proc/*/fd` for the processes holding each socket.

enum SocketTableReader {
    /// - Parameter procOnly: Skip the socket diagnostics, as where the
    ///   `unix_diag` module is missing (for tests of the fallback).
    static func read(withProcesses: Bool, procOnly: Bool = false) throws(SocketError) -> [UnixSocketEntry] {
        var owners: [UInt64: [SocketProcess]] = [:]
        var entries: [UnixSocketEntry]
        switch procOnly ? .failure(.noSuchFileOrDirectory) : SocketDiagnostics.dump() {
        case .success(let dumped):
            entries = dumped
            if withProcesses { owners = ProcessTable.socketOwners() }
        case .failure(let diagError):
            // /proc/net/unix resolves relative paths against the owner's
            // working directory, so it needs the owners first.
            owners = ProcessTable.socketOwners()
            guard let parsed = ProcNetUnix.read(owners: owners) else {
                throw SocketError("socket table", code: .system(diagError))
            }
            entries = parsed
            if !withProcesses { owners = [:] }
        }
        for index in entries.indices {
            entries[index].processes = owners[entries[index].socketInode] ?? []
        }
        return entries
    }

    static func type(_ raw: Int) -> UnixSocketType? {
        switch CInt(raw) {
        case CInt(SOCK_STREAM.rawValue): .stream
        case CInt(SOCK_DGRAM.rawValue): .datagram
        case CInt(SOCK_SEQPACKET.rawValue): .seqpacket
        default: nil
        }
    }
}

/// `NETLINK_SOCK_DIAG` for `AF_UNIX`: every socket with its name and the
/// device and inode of the file it bound.
private enum SocketDiagnostics {
    // linux/netlink.h, linux/sock_diag.h, linux/unix_diag.h
    static let netlinkSockDiag: CInt = 4
    static let sockDiagByFamily: UInt16 = 20
    static let requestFlags: UInt16 = 0x1 | 0x300  // NLM_F_REQUEST | NLM_F_DUMP
    static let messageDone: UInt16 = 3
    static let messageError: UInt16 = 2
    static let showName: UInt32 = 0x1
    static let showVFS: UInt32 = 0x2
    static let showPeer: UInt32 = 0x4
    static let showQueueLengths: UInt32 = 0x10
    static let attributeName: UInt16 = 0
    static let attributeVFS: UInt16 = 1
    static let attributePeer: UInt16 = 2
    static let attributeQueueLengths: UInt16 = 4
    // include/net/tcp_states.h: what unix_diag reports as udiag_state.
    static let established: UInt8 = 1
    static let synSent: UInt8 = 2
    static let close: UInt8 = 7
    static let listen: UInt8 = 10

    static func dump() -> Result<[UnixSocketEntry], Errno> {
        let fd: CInt
        switch Sys.valueOrErrno({ socket(AF_NETLINK, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), netlinkSockDiag) }) {
        case .success(let created): fd = created
        case .failure(let errno): return .failure(errno)
        }
        defer { _ = Sys.close(fd) }
        // Ten seconds at most for the kernel to answer: never hang a command.
        _ = Sys.setTimeout(fd, receive: true, .seconds(10))

        var request: [UInt8] = []
        request.append(native: UInt32(16 + 24))  // nlmsghdr.nlmsg_len
        request.append(native: sockDiagByFamily)
        request.append(native: requestFlags)
        request.append(native: UInt32(1))  // sequence number
        request.append(native: UInt32(0))  // port ID: the kernel's
        request.append(UInt8(AF_UNIX))  // unix_diag_req.sdiag_family
        request.append(0)  // sdiag_protocol
        request.append(native: UInt16(0))
        request.append(native: UInt32.max)  // udiag_states: all
        request.append(native: UInt32(0))  // udiag_ino: any
        request.append(native: showName | showVFS | showPeer | showQueueLengths)
        request.append(native: UInt32.max)  // udiag_cookie: none
        request.append(native: UInt32.max)
        if case .failure(let errno) = request.withUnsafeBytes({ Sys.send(fd, $0) }) { return .failure(errno) }

        var entries: [UnixSocketEntry] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count: Int
            switch buffer.withUnsafeMutableBytes({ Sys.receive(fd, $0) }) {
            case .success(let received): count = received
            case .failure(let errno): return .failure(errno)
            }
            if count == 0 { return .failure(.ioError) }
            var offset = 0
            while offset + 16 <= count {
                let length = Int(buffer.load(UInt32.self, at: offset))
                let type = buffer.load(UInt16.self, at: offset + 4)
                guard length >= 16, offset + length <= count else { return .failure(.ioError) }
                if type == messageDone { return .success(entries) }
                if type == messageError {
                    let code = length >= 20 ? -Int32(bitPattern: buffer.load(UInt32.self, at: offset + 16)) : 0
                    return .failure(code > 0 ? Errno(rawValue: code) : .ioError)
                }
                if type == sockDiagByFamily, let entry = parse(buffer[(offset + 16)..<(offset + length)]) {
                    entries.append(entry)
                }
                offset += (length + 3) & ~3
            }
        }
    }

    /// One `unix_diag_msg` and its attributes.
    private static func parse(_ message: ArraySlice<UInt8>) -> UnixSocketEntry? {
        let base = message.startIndex
        guard message.count >= 16 else { return nil }
        let rawType = message[base + 1]
        let rawState = message[base + 2]
        let socketInode = UInt64(message.load(UInt32.self, at: base + 4))
        var address = UnixAddress.unnamed
        var device: UInt64?
        var inode: UInt64?
        var peer: UInt64?
        var queues: (UInt32, UInt32)?
        var offset = base + 16
        while offset + 4 <= message.endIndex {
            let length = Int(message.load(UInt16.self, at: offset))
            let type = message.load(UInt16.self, at: offset + 2)
            guard length >= 4, offset + length <= message.endIndex else { break }
            let data = message[(offset + 4)..<(offset + length)]
            if type == attributeName, !data.isEmpty {
                if data.first == 0 {
                    address = UnixAddress(kind: .abstract, bytes: Array(data.dropFirst()))
                } else {
                    address = UnixAddress(kind: .path, bytes: Array(data.prefix { $0 != 0 }))
                }
            } else if type == attributeVFS, data.count >= 8 {
                inode = UInt64(data.load(UInt32.self, at: data.startIndex))
                device = userDevice(kernel: data.load(UInt32.self, at: data.startIndex + 4))
            } else if type == attributePeer, data.count >= 4 {
                let value = data.load(UInt32.self, at: data.startIndex)
                if value != 0 { peer = UInt64(value) }
            } else if type == attributeQueueLengths, data.count >= 8 {
                queues = (data.load(UInt32.self, at: data.startIndex), data.load(UInt32.self, at: data.startIndex + 4))
            }
            offset += (length + 3) & ~3
        }
        let state: UnixSocketEntry.State =
            switch rawState {
            case listen: .listening
            case established: .connected
            case synSent: .connecting
            case close: .unconnected
            default: .disconnecting
            }
        return UnixSocketEntry(
            type: SocketTableReader.type(Int(rawType)), state: state, address: address,
            socketInode: socketInode, fileDevice: device, fileInode: inode,
            peerInode: peer, receiveQueue: queues?.0, sendQueue: queues?.1)
    }

    /// The kernel's `dev_t` (major << 20 | minor) as `stat` reports it (glibc's `makedev`).
    private static func userDevice(kernel: UInt32) -> UInt64 {
        let major = UInt64(kernel >> 20)
        let minor = UInt64(kernel & 0xfffff)
        return ((major & 0x0000_0fff) << 8) | ((major & 0xffff_f000) << 32)
            | (minor & 0x0000_00ff) | ((minor & 0xffff_ff00) << 12)
    }
}

/// `/proc/net/unix`: `Num RefCount Protocol Flags Type St Inode Path`.
private enum ProcNetUnix {
    static let acceptingConnections: UInt32 = 0x10000  // __SO_ACCEPTCON

    static func read(owners: [UInt64: [SocketProcess]]) -> [UnixSocketEntry]? {
        guard let bytes = ProcessTable.readFile("/proc/net/unix") else { return nil }
        var entries: [UnixSocketEntry] = []
        for line in bytes.split(separator: UInt8(ascii: "\n")).dropFirst() {
            // Seven fields, then the path, which may itself contain spaces.
            var fields: [ArraySlice<UInt8>] = []
            var rest = line[...]
            while fields.count < 7 {
                rest = rest.drop { $0 == UInt8(ascii: " ") }
                let field = rest.prefix { $0 != UInt8(ascii: " ") }
                if field.isEmpty { break }
                fields.append(field)
                rest = rest.dropFirst(field.count)
            }
            guard fields.count == 7,
                let flags = UInt32(text(fields[3]), radix: 16),
                let type = Int(text(fields[4]), radix: 16),
                let socketState = Int(text(fields[5]), radix: 16),
                let socketInode = UInt64(text(fields[6]))
            else { continue }
            let path = Array(rest.dropFirst())
            var address = UnixAddress.unnamed
            if path.first == UInt8(ascii: "@") {
                address = UnixAddress(kind: .abstract, bytes: Array(path.dropFirst()))
            } else if !path.isEmpty {
                address = UnixAddress(kind: .path, bytes: path)
            }
            let state: UnixSocketEntry.State =
                if flags & acceptingConnections != 0 { .listening } else {
                    switch socketState {
                    case 1: .unconnected
                    case 2: .connecting
                    case 3: .connected
                    default: .disconnecting
                    }
                }
            var entry = UnixSocketEntry(
                type: SocketTableReader.type(type), state: state, address: address, socketInode: socketInode)
            if address.kind == .path, state != .connected {
                // The path as bound; a relative one is taken from the working
                // directory of a process that holds the socket.
                var resolved = address.bytes
                if resolved.first != UInt8(ascii: "/"), let owner = owners[socketInode]?.first {
                    resolved = Array("/proc/\(owner.processID)/cwd/".utf8) + resolved
                }
                if case .success(let status) = Sys.fileStatus(path: resolved), FileType(mode: status.st_mode) == .socket {
                    entry.fileDevice = UInt64(status.st_dev)
                    entry.fileInode = UInt64(status.st_ino)
                }
            }
            entries.append(entry)
        }
        return entries
    }

    private static func text(_ bytes: ArraySlice<UInt8>) -> String { String(decoding: bytes, as: UTF8.self) }
}

/// Which processes hold which sockets, from `/proc/PID/fd/N -> socket:[INODE]`.
enum ProcessTable {
    static func socketOwners() -> [UInt64: [SocketProcess]] {
        var owners: [UInt64: [SocketProcess]] = [:]
        for name in directoryEntries("/proc") {
            guard let pid = Int32(name), pid > 0 else { continue }
            var command: String?
            var seen: Set<UInt64> = []
            for descriptor in directoryEntries("/proc/\(pid)/fd") {
                guard let target = readLink("/proc/\(pid)/fd/\(descriptor)"),
                    target.hasPrefix("socket:["), target.hasSuffix("]"),
                    let inode = UInt64(target.dropFirst(8).dropLast()),
                    seen.insert(inode).inserted
                else { continue }
                if command == nil {
                    let comm = readFile("/proc/\(pid)/comm") ?? []
                    command = String(decoding: comm.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
                }
                owners[inode, default: []].append(SocketProcess(processID: pid, command: command ?? "?"))
            }
        }
        return owners
    }

    /// The names in a directory, without `.` and `..`; empty if it cannot be read.
    static func directoryEntries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count >= 0 else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A small file's whole contents (procfs files report size 0, so read to the end).
    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = Sys.close(fd) }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let result = Sys.valueOrErrno { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            guard case .success(let count) = result else { return nil }
            if count == 0 { return contents }
            contents += chunk[..<count]
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func append<T: FixedWidthInteger>(native value: T) {
        Swift.withUnsafeBytes(of: value) { append(contentsOf: $0) }
    }
}

extension Collection where Element == UInt8, Index == Int {
    /// A native-endian integer at `offset`, however aligned.
    fileprivate func load<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var value: T = 0
        withUnsafeMutableBytes(of: &value) { target in
            for index in 0..<MemoryLayout<T>.size { target[index] = self[offset + index] }
        }
        return value
    }
}
#endif
