import Foundation
import Synchronization
import UDSKit

// `uds relay unix-listen:FRONT TO --type dgram`: datagrams have no
// connections, so each named sender gets its own upstream socket, bound to
// an automatic address and connected to TO; what TO answers there goes back
// to that sender from FRONT. An unnamed sender cannot be answered: its
// datagrams are forwarded from one shared unbound socket.

final class DatagramRelay: Sendable {
    private struct Peer: Sendable {
        let id: Int
        let upstream: DatagramSocket
        let tap: DumpTap?
        var lastUsed: ContinuousClock.Instant
    }

    private let front: DatagramSocket
    private let target: UnixAddress
    private let log: RelayLog
    private let maximumPeers: Int
    private let peers = Mutex<[UnixAddress: Peer]>([:])
    private let lastID = Atomic<Int>(0)

    init(front: DatagramSocket, target: UnixAddress, log: RelayLog, maximumPeers: Int) {
        self.front = front
        self.target = target
        self.log = log
        self.maximumPeers = maximumPeers
    }

    /// Closes the front socket and every upstream one (removing any files).
    func close() {
        try? front.close()
        let all = peers.withLock { peers in
            defer { peers = [:] }
            return Array(peers.values)
        }
        for peer in all { try? peer.upstream.close() }
    }

    /// Receives at the front until it is closed.
    func run() throws(SocketError) {
        if let idle = log.idleTimeout { Thread.detachNewThread { self.sweep(idle: idle) } }
        let anonymous = try DatagramSocket.unbound()
        defer { try? anonymous.close() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumMessageSize, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let receipt = try front.receive(into: buffer)
            let message = UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count])
            let sender = receipt.sender ?? .unnamed
            if receipt.isTruncated {
                ServerReports.report(SocketError("recvmsg", address: sender.description,
                    code: .messageTruncated(length: receipt.fullLength, capacity: maximumMessageSize)))
                continue
            }
            do {
                guard sender.kind != .unnamed else {
                    _ = try anonymous.send(message, to: target)
                    continue
                }
                let peer = try self.peer(for: sender)
                peer.tap?.record(.forward, message)
                _ = try peer.upstream.send(message)
            } catch {
                ServerReports.report(error)  // TO is down, say: keep serving the others.
            }
        }
    }

    /// The sender's peer, made (and its answers relayed) on its first datagram.
    private func peer(for sender: UnixAddress) throws(SocketError) -> Peer {
        let now = ContinuousClock.now
        if let known = peers.withLock({ peers -> Peer? in
            peers[sender]?.lastUsed = now
            return peers[sender]
        }) { return known }
        let upstream = try DatagramSocket.bind(to: try automaticRelayAddress())
        do {
            try upstream.connect(to: target)
        } catch {
            try? upstream.close()
            throw Diagnosis.connect(error, to: target, as: .datagram, suggesting: false)
        }
        let id = lastID.add(1, ordering: .relaxed).newValue
        log.opened(id, from: sender.description, to: target.description)
        let peer = Peer(id: id, upstream: upstream, tap: log.dump?.tap(sender.description, target.description, connection: id), lastUsed: now)
        let evicted: Peer? = peers.withLock { peers in
            var oldest: Peer?
            if peers.count >= maximumPeers, let key = peers.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key {
                oldest = peers.removeValue(forKey: key)
            }
            peers[sender] = peer
            return oldest
        }
        if let evicted { try? evicted.upstream.close() }
        Thread.detachNewThread { self.answer(sender, through: peer) }
        return peer
    }

    /// Sends what TO answers at the peer's socket back to `sender`, until that socket is closed.
    private func answer(_ sender: UnixAddress, through peer: Peer) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumMessageSize, alignment: 1)
        defer { buffer.deallocate() }
        var answered = 0
        while let receipt = try? peer.upstream.receive(into: buffer) {
            let message = UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count])
            peer.tap?.record(.backward, message)
            peers.withLock { $0[sender]?.lastUsed = .now }
            do {
                _ = try front.send(message, to: sender)
                answered += message.count
            } catch {
                ServerReports.report(error)  // The sender went away.
            }
        }
        if log.verbose { Console.standardError.line("uds: connection \(peer.id) closed: \(answered) bytes back") }
    }

    /// Closes the peers that were quiet for `idle` seconds, now and then.
    private func sweep(idle: Double) {
        let limit = Duration.nanoseconds(Int64(idle * 1e9))
        while true {
            Thread.sleep(forTimeInterval: min(max(idle / 4, 0.01), 1))
            let now = ContinuousClock.now
            let expired: [Peer] = peers.withLock { peers in
                let old = peers.filter { now - $0.value.lastUsed >= limit }
                for key in old.keys { peers.removeValue(forKey: key) }
                return Array(old.values)
            }
            for peer in expired {
                log.idle(peer.id, seconds: idle)
                try? peer.upstream.close()
            }
        }
    }
}

/// An address of our own to receive TO's answers at: an abstract name on
/// Linux (nothing to clean up), a path in /tmp elsewhere (removed on close).
private func automaticRelayAddress() throws(SocketError) -> UnixAddress {
    let tag = "uds-relay-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
    #if os(Linux)
    return try UnixAddress(abstractName: tag)
    #else
    return try UnixAddress(path: "/tmp/" + tag + ".sock")
    #endif
}
