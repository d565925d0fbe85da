import UDSKit

// What relay needs beyond stream connections: listeners of either
// connection type, and seqpacket connections as relay sides.

/// A stream or seqpacket listener as the relay's FROM.
struct RelayListener: Sendable {
    let shown: String
    let replacedStaleSocket: Bool
    private let acceptNext: @Sendable () throws(SocketError) -> (any ByteStream, String)
    private let closeListener: @Sendable () -> Void

    /// Binds `endpoint`, or adopts the socket a service manager `passed`.
    static func bind(
        _ endpoint: Endpoint, passed: ActivatedSockets.Passed?, type: SocketTypeOption, options: BindOptions,
        admitting policy: AccessPolicy
    ) throws(SocketError) -> RelayListener {
        switch type {
        case .seqpacket:
            guard let address = endpoint.unixAddress else {
                throw SocketError("bind", address: endpoint.description, code: .invalidArgument("seqpacket needs a Unix socket address"))
            }
            let listener = try ServingOptions.adopt(
                passed, { (descriptor) throws(SocketError) in try SeqpacketListener(adopting: descriptor, admitting: policy, logger: options.logger) },
                orBind: { () throws(SocketError) in try SeqpacketListener.bind(to: address, options: options, admitting: policy) })
            return RelayListener(
                shown: passed.map(ServingOptions.startupName(of:)) ?? endpoint.description,
                replacedStaleSocket: listener.replacedStaleSocket,
                acceptNext: { () throws(SocketError) in
                    let (socket, peer) = try listener.accept()
                    return (SeqpacketStream(socket: socket, peer: peer.description), peer.description)
                },
                closeListener: { try? listener.close() })
        case .stream, .dgram:
            let listener = try ServingOptions.adopt(
                passed, { (descriptor) throws(SocketError) in try StreamListener(adopting: descriptor, admitting: policy, logger: options.logger) },
                orBind: { () throws(SocketError) in try StreamListener.bind(to: endpoint, options: options, admitting: policy) })
            let shown = passed.map(ServingOptions.startupName(of:)) ?? (try? listener.localEndpoint())?.description ?? endpoint.description
            return RelayListener(
                shown: shown,
                replacedStaleSocket: listener.replacedStaleSocket,
                acceptNext: { () throws(SocketError) in
                    let (connection, peer) = try listener.accept()
                    return (ConnectionStream(connection: connection, name: shown), peer.description)
                },
                closeListener: { try? listener.close() })
        }
    }

    func accept() throws(SocketError) -> (any ByteStream, String) { try acceptNext() }
    func close() { closeListener() }
}

/// A seqpacket connection as a relay side: each read is one message and
/// each write sends one, so boundaries survive the relay. A message too
/// long for the buffer is an error, never cut silently.
struct SeqpacketStream: ByteStream {
    let socket: SeqpacketSocket
    let peer: String

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let receipt = try socket.receive(into: buffer)
        if receipt.isTruncated {
            throw SocketError("recvmsg", address: peer, code: .messageTruncated(length: receipt.fullLength, capacity: buffer.count))
        }
        return receipt.count
    }

    func writeAll(_ buffer: UnsafeRawBufferPointer) throws { try socket.send(buffer) }
    func closeWrite() { try? socket.shutdown(.write) }
    func close() { try? socket.close() }
}
