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
