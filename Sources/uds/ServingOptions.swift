import ArgumentParser
import Logging
import SystemPackage
import UDSKit

/// What every command that listens shares: who may connect, which socket a
/// service manager passed to serve on, and what is logged.
struct ServingOptions: ParsableArguments {
    @Option(name: .customLong("allow-uid"), help: "Admit only peers with this user ID (repeatable; with --allow-gid, either may match).")
    var allowedUserIDs: [UInt32] = []

    @Option(name: .customLong("allow-gid"), help: "Admit only peers in this group, primary or supplementary (the option can be repeated).")
    var allowedGroupIDs: [UInt32] = []

    @Option(name: .customLong("activated"), help: "With several sockets passed by a service manager, the name of the one to serve (LISTEN_FDNAMES).")
    var activatedName: String?

    @Option(name: .customLong("log-level"), help: LogLevelOption.help)
    var logLevel: LogLevelOption?

    /// The log of refusals, accept back-off, activation and shutdown, on
    /// standard error; `nil` without --log-level.
    var logger: Logger? { LogLevelOption.logger(logLevel) }

    /// Whether --allow-uid or --allow-gid narrow who may connect.
    var restrictsPeers: Bool { !allowedUserIDs.isEmpty || !allowedGroupIDs.isEmpty }

    /// A datagram socket has no connection to check or refuse: never ignore
    /// an access restriction silently.
    func checkConnections(for type: SocketTypeOption) throws {
        if type == .dgram && restrictsPeers {
            throw ValidationError("--allow-uid and --allow-gid need connections: use --type stream or seqpacket")
        }
    }

    /// Everyone, unless --allow-uid or --allow-gid narrow it; each refusal is
    /// one line on standard error.
    var accessPolicy: AccessPolicy {
        guard restrictsPeers else { return .everyone }
        return .users(Set(allowedUserIDs), groups: Set(allowedGroupIDs)) { refused in
            Console.standardError.line("uds: refused a connection from \(describe(refused)): not an allowed uid or gid")
        }
    }

    /// The socket a service manager passed (`LISTEN_FDS`), if any; with
    /// several, the one --activated names. The variables are unset, so a
    /// child started later does not take them for its own.
    /// `logger` is told what was passed (`--log-level info`).
    func passedSocket(logger: Logger? = nil) throws(SocketError) -> ActivatedSockets.Passed? {
        let activated = try ActivatedSockets.take(logger: logger)
        return activated.sockets.isEmpty ? nil : try activated.take(named: activatedName)
    }

    /// The `passed` socket adopted, or if none was passed, a new one bound.
    static func adopt<Socket>(
        _ passed: ActivatedSockets.Passed?, _ adopt: (FileDescriptor) throws(SocketError) -> Socket,
        orBind bind: () throws(SocketError) -> Socket
    ) throws(SocketError) -> Socket {
        if let passed { try adopt(passed.descriptor) } else { try bind() }
    }

    /// The start-up line's name for a passed socket.
    static func startupName(of passed: ActivatedSockets.Passed) -> String {
        "activated socket \(passed.name) (\(passed.address.map(\.description) ?? "unnamed"))"
    }

    /// The socket type of a passed socket, as the --type option spells it.
    static func type(of passed: ActivatedSockets.Passed) -> SocketTypeOption? {
        SocketTypeOption(rawValue: passed.type == "datagram" ? "dgram" : passed.type)
    }
}
