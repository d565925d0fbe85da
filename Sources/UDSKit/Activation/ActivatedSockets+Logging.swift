import Logging

extension ActivatedSockets {
    /// One info line per passed socket, so that an operator sees what the
    /// service manager handed over (and a misnamed socket is easy to spot).
    func log(to logger: Logger) {
        guard !sockets.isEmpty else {
            logger.debug("socket activation: no sockets were passed")
            return
        }
        for passed in sockets {
            logger.info("socket activation: took a socket", metadata: [
                LogKey.name: "\(passed.name)",
                LogKey.descriptor: "\(passed.descriptor.rawValue)",
                LogKey.type: "\(passed.type)",
                LogKey.listening: "\(passed.isListening)",
                LogKey.address: "\(passed.address.map(\.description) ?? "unnamed")",
            ])
        }
    }
}
