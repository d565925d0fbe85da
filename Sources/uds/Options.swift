import ArgumentParser
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
