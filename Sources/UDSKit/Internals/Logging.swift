import Logging

// What listeners log, and at which level. Only events an operator acts on:
// a refused peer, an accept that had to shed or pause. A successful accept
// or message is never logged, and without a logger nothing is built.

extension SocketHandle {
    /// The listener's logger, if it has one.
    var currentLogger: Logger? { logger.withLock { $0 } }

    /// Sets the logger if none was set (a server lends its own to a listener
    /// that was adopted, which had no ``BindOptions``).
    func adoptLogger(_ lent: Logger) {
        logger.withLock { if $0 == nil { $0 = lent } }
    }

    /// A peer the access policy refused: a notice, since it may be an attack
    /// or a misconfigured client, and the operator can tell which.
    func logRefusal(of credentials: PeerCredentials) {
        guard let logger = currentLogger else { return }
        var metadata: Logger.Metadata = [
            LogKey.peerUserID: "\(credentials.userID)",
            LogKey.peerGroupID: "\(credentials.groupID)",
        ]
        if let pid = credentials.processID { metadata[LogKey.peerProcessID] = "\(pid)" }
        if let label = currentLabel { metadata[LogKey.socket] = "\(label)" }
        logger.notice("refused a connection: the access policy does not admit the peer", metadata: metadata)
    }

    /// How accept got through a failure: a warning, since the process is short
    /// of descriptors or memory.
    func log(_ event: AcceptRecoveryEvent) {
        guard let logger = currentLogger else { return }
        var metadata: Logger.Metadata = [:]
        if let label = currentLabel { metadata[LogKey.socket] = "\(label)" }
        switch event {
        case .shedConnection(let error):
            metadata[LogKey.error] = "\(error)"
            logger.warning("out of descriptors: closed a pending connection to keep serving", metadata: metadata)
        case .pausing(let error, let pause):
            metadata[LogKey.error] = "\(error)"
            metadata[LogKey.pause] = "\(pause)"
            logger.warning("accept paused", metadata: metadata)
        case .credentialsUnavailable(let error):
            metadata[LogKey.error] = "\(error)"
            logger.warning("refused a connection: the peer's credentials could not be read", metadata: metadata)
        }
    }
}

/// The metadata keys UDSKit logs with, in one place so they stay consistent.
enum LogKey {
    static let socket = "socket"
    static let peerUserID = "peer.uid"
    static let peerGroupID = "peer.gid"
    static let peerProcessID = "peer.pid"
    static let error = "error"
    static let pause = "pause"
    static let connections = "connections"
    static let connection = "connection"
    static let gracePeriod = "grace"
    static let name = "name"
    static let descriptor = "fd"
    static let type = "type"
    static let listening = "listening"
    static let address = "address"
}
