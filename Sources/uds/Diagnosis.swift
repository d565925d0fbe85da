import ArgumentParser
import UDSKit

// Errors retold with what uds can find out about the address: the kernel's
// one word ("connection refused") often hides a simpler answer (a regular
// file, a socket of another type) that the probe and the socket table know.

enum Diagnosis {
    /// A failed connect of a `wanted` socket to `address`, explained where the
    /// file or the socket there says more than the error number. Looks, never
    /// connects: no server sees it.
    /// - Parameter suggesting: Whether the command has a `--type` to suggest.
    static func connect(
        _ error: SocketError, to address: UnixAddress, as wanted: UnixSocketType, suggesting: Bool = true
    ) -> SocketError {
        guard let errno = error.errno, [.connectionRefused, .protocolWrongTypeForSocket].contains(errno) else {
            return error
        }
        if address.kind == .path, let file = try? FileStatus(pathBytes: address.bytes), file.type != .socket {
            return retold(error, "the path is a \(file.type.name), not a socket")
        }
        guard errno == .protocolWrongTypeForSocket else { return error }
        let found = boundType(at: address)
        if let found, !suggesting {
            return retold(error, "a \(found.noun) is there, not a \(wanted.noun)")
        }
        switch found {
        case .datagram?:
            return retold(error, "a datagram socket is bound there, not a \(wanted.noun); use --type dgram")
        case .seqpacket?:
            return retold(error, "a seqpacket listener is there, not a \(wanted.noun); use --type seqpacket")
        case .stream?:
            return retold(error, "a stream listener is there, not a \(wanted.noun); use --type stream")
        case nil:
            return retold(error, "the socket there is not a \(wanted.noun); try another --type")
        }
    }

    /// A failed bind: the library probes an existing file as part of binding,
    /// and names that step; the user asked to bind.
    static func bind(_ error: SocketError) -> SocketError {
        guard error.operation == "probe" else { return error }
        var renamed = error
        renamed.operation = "bind"
        if error.errno == .permissionDenied || error.errno == .notPermitted {
            return retold(renamed, "permission denied: a socket file is there that this user may not connect to, "
                + "so whether a server holds it cannot be told; it was left untouched")
        }
        return renamed
    }

    /// A write that failed because the peer had closed: a server that refuses
    /// a client after accepting it (a credential check) does just that, and
    /// the client has nothing else to go by.
    static func peerClosed(_ error: any Error) -> any Error {
        guard let error = error as? SocketError, error.errno == .brokenPipe || error.errno == .connectionReset else {
            return error
        }
        return retold(error, "\(error.reason) (the peer closed the connection without reading it all; "
            + "a server that refuses a client, such as echo-server --allow-uid, closes at once)")
    }

    /// Why a datagram cannot be sent to `address`, found before the first
    /// message, so that even no message at all reports a bad address.
    static func datagramDestination(_ address: UnixAddress) -> SocketError? {
        let status: SocketFileStatus
        do {
            status = try SocketFileStatus.probe(address)
        } catch {
            return nil  // The send itself will say.
        }
        switch status {
        case .listening(let type?, _) where type != .datagram:
            return SocketError("sendto", address: address.description,
                code: .invalidArgument("a \(type.noun) is there, not a datagram socket; use --type \(type.description)"))
        case .listening(nil, _) where address.kind == .path:
            let reason =
                switch boundType(at: address) {
                case .stream?: "a stream listener is there, not a datagram socket; use uds connect"
                case .seqpacket?: "a seqpacket listener is there, not a datagram socket; use --type seqpacket"
                default: "a stream or seqpacket listener is there, not a datagram socket"
                }
            return SocketError("sendto", address: address.description, code: .invalidArgument(reason))
        case .listening, .noPermission:
            return nil
        case .stale:
            return SocketError("sendto", address: address.description,
                code: .invalidArgument("connection refused (a stale socket file: nobody is bound there)"))
        case .notASocket(let type):
            return SocketError("sendto", address: address.description,
                code: .invalidArgument("the path is a \(type.name), not a socket"))
        case .absent:
            return SocketError("sendto", address: address.description,
                code: address.kind == .abstract ? .invalidArgument("no socket has this name") : .system(.noSuchFileOrDirectory))
        }
    }

    /// The type of the socket that holds `address`, from the kernel's socket
    /// table (Linux); nil where that cannot tell.
    static func boundType(at address: UnixAddress) -> UnixSocketType? {
        guard let table = try? UnixSocketTable.entries(withProcesses: false) else {
            if case .listening(.datagram?, _)? = try? SocketFileStatus.probe(address) { return .datagram }
            return nil
        }
        if address.kind == .path {
            guard let file = try? FileStatus(pathBytes: address.bytes) else { return nil }
            return table.first { $0.isBound(to: file) && $0.holdsAddress }?.type
        }
        return table.first { $0.address == address && $0.holdsAddress }?.type
    }

    private static func retold(_ error: SocketError, _ reason: String) -> SocketError {
        SocketError(error.operation, address: error.address, code: .invalidArgument(reason))
    }
}

extension UnixSocketType {
    /// What a client of this type connects to: `stream listener`.
    var noun: String {
        switch self {
        case .stream: "stream listener"
        case .datagram: "datagram socket"
        case .seqpacket: "seqpacket listener"
        }
    }
}

extension SocketTypeOption {
    var socketType: UnixSocketType {
        switch self {
        case .stream: .stream
        case .dgram: .datagram
        case .seqpacket: .seqpacket
        }
    }
}

/// Ends the command if `endpoint` is the empty abstract name (`@` alone).
/// The kernel accepts it, but nobody means it: it is what a missing name
/// after `@` in a script turns into.
func requireBindable(_ endpoint: Endpoint) throws {
    guard let address = endpoint.unixAddress, address.kind == .abstract, address.bytes.isEmpty else { return }
    report(SocketError("bind", address: address.description,
        code: .invalidAddress("the empty abstract name cannot be bound; give a name after @")))
    throw ExitCode.failure
}
