import ArgumentParser
import Foundation
import Synchronization
import UDSKit

struct Send: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send datagrams or seqpacket messages: one per MESSAGE, or one per line of standard input.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds send <address> [<messages> ...] [--type <type>] [options]",
        discussion: """
            Each MESSAGE is sent as one message, whole, with its boundaries kept; with no
            MESSAGE, each line of standard input is one (without its newline). A datagram
            is sent from an unbound socket unless --bind names an address, which the
            receiver then sees as the sender (and which is removed again on exit).
            Seqpacket messages go over one connection, closed after the last.

            Exit status: 0 when every message was sent, 1 on an error.

            Examples:
              uds send /tmp/log.dgram "disk full" "retrying"
              uds send @events --type seqpacket started
              journalctl -f | uds send /tmp/log.dgram
              uds send /tmp/server.dgram ping --bind /tmp/me.dgram
            """
    )

    @Argument(help: "Where to send: PATH, @name or unix:PATH.")
    var address: String

    @Argument(help: "The messages, each sent as one; with none, each line of standard input is one.")
    var messages: [String] = []

    @Option(name: .customLong("type"), help: "The socket type (streams: see uds connect and uds listen).")
    var messageType: MessageTypeOption = .dgram
    var type: SocketTypeOption { messageType.socketType }

    @Option(name: .customLong("bind"), help: "An address to send from, so the receiver sees (and can answer) it.")
    var localAddress: String?

    @Option(parsing: .unconditional, help: "Fail if a message cannot be sent for this long (the receiver's queue is full): a duration, \(OptionRange.seconds.help).")
    var timeout: DurationOption?

    func validate() throws {
        try OptionRange.seconds.check("--timeout", timeout)
    }

    func run() throws {
        let server = try unixAddress(of: try parseEndpoint(address), for: "send")
        let local = try localAddress.map(parseAddress)
        if let local { try requireBindable(.unix(local)) }
        do {
            let deliver: ([UInt8]) throws -> Void
            let finish: @Sendable () -> Void
            switch type {
            case .dgram, .stream:
                let socket = try local.map { address throws(SocketError) in try DatagramSocket.bind(to: address) }
                    ?? DatagramSocket.unbound()
                deliver = { message in
                    do {
                        try socket.send(message, to: server, timeout: timeout?.duration)
                    } catch {
                        // The kernel's word ("protocol wrong type"), retold where
                        // the address says more.
                        throw Diagnosis.datagramDestination(server) ?? error
                    }
                }
                finish = { try? socket.close() }
            case .seqpacket:
                let socket = try connectSeqpacket(to: server, from: local)
                deliver = { try socket.send($0, timeout: timeout?.duration) }
                finish = {
                    try? socket.shutdown(.write)
                    try? socket.close()
                }
            }
            exitOnShutdownSignals(finish)
            defer { finish() }
            var sent = 0
            if messages.isEmpty {
                let reader = InputReader(lines: true)
                while let line = try reader.next() {
                    try deliver(line)
                    sent += 1
                }
            } else {
                for message in messages { try deliver(Array(message.utf8)) }
                sent = messages.count
            }
            // No message at all still reports an address nobody could send to.
            if sent == 0, type == .dgram, let unreachable = Diagnosis.datagramDestination(server) { throw unreachable }
        } catch let error as SocketError {
            report(error)
            throw ExitCode.failure
        } catch let error as StandardStreamError {
            report(error)
            throw ExitCode.failure
        }
    }
}

/// A seqpacket connection to `server`, a failure explained.
private func connectSeqpacket(to server: UnixAddress, from local: UnixAddress?) throws(SocketError) -> SeqpacketSocket {
    do {
        return try SeqpacketSocket.connect(to: server, from: local)
    } catch where error.operation == "connect" {
        throw Diagnosis.connect(error, to: server, as: .seqpacket)
    }
}

struct Receive: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "recv",
        abstract: "Bind a socket and print each datagram or seqpacket message it receives, with its sender.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds recv <address> [--type <type>] [--count <count>] [options]",
        discussion: """
            Each message is printed on one line: received b'...' from SENDER, the bytes as
            Python prints them (so any byte is visible and the line stays one line), and the
            sender's address, or (unnamed) if it did not bind one. --raw prints the bytes
            alone, each message followed by a newline. A message longer than 256 KiB is
            reported as truncated, never silently cut.

            The address is bound safely, as by echo-server, and removed on exit. Once bound,
            uds prints "uds: listening on ADDRESS" on standard error. For seqpacket, every
            connection is served at once and the sender is the connection's peer.

            --count N exits after N messages. --timeout T gives up after T without a
            message: with --count that is an error (exit status 1), without it the normal
            end (exit status 0).

            Examples:
              uds recv /tmp/log.dgram
              uds recv /tmp/log.dgram --count 1 --timeout 5 --raw
              uds recv @events --type seqpacket --credentials
            """
    )

    @Argument(help: "Where to receive: PATH, @name or unix:PATH.")
    var address: String

    @Option(name: .customLong("type"), help: "The socket type (streams: see uds connect and uds listen).")
    var messageType: MessageTypeOption = .dgram
    var type: SocketTypeOption { messageType.socketType }

    @Option(parsing: .unconditional, help: "Exit after this many messages (\(OptionRange.count.help)).")
    var count: Int?

    @Option(parsing: .unconditional, help: "Stop after this long with no message (\(OptionRange.seconds.help)).")
    var timeout: DurationOption?

    @Flag(help: "Print only the bytes of each message, each followed by a newline.")
    var raw = false

    @Flag(help: "Also print each sender's pid, uid and gid, as the kernel vouches for them (Linux for dgram).")
    var credentials = false

    @Option(help: "The socket file's mode, in octal (e.g. 622).")
    var mode: FileModeOption?

    @OptionGroup(title: "Access and activation")
    var serving: ServingOptions

    func validate() throws {
        try OptionRange.count.check("--count", count)
        try OptionRange.seconds.check("--timeout", timeout)
        try serving.checkConnections(for: type)
    }

    func run() throws {
        let endpoint = try parseEndpoint(address)
        let address = try unixAddress(of: endpoint, for: "recv")
        let logger = serving.logger
        let options = BindOptions(permissions: mode?.permissions, logger: logger)
        let tally = MessageTally(limit: count, raw: raw)
        let close: @Sendable () -> Void
        let shown: String
        do {
            // A socket a service manager passed wins over the address.
            let passed = try serving.passedSocket(logger: logger)
            if passed == nil { try requireBindable(endpoint) }
            shown = passed.map(ServingOptions.startupName(of:)) ?? endpoint.description
            switch passed.flatMap(ServingOptions.type(of:)) ?? type {
            case .dgram, .stream:
                if serving.restrictsPeers {
                    Console.standardError.line("uds: recv: the activated socket is a datagram socket, which has no connections to refuse")
                    throw ExitCode(64)
                }
                let socket = try ServingOptions.adopt(
                    passed, { (descriptor) throws(SocketError) in try DatagramSocket(adopting: descriptor) },
                    orBind: { () throws(SocketError) in try DatagramSocket.bind(to: address, options: options) })
                if socket.replacedStaleSocket { announceStaleReplaced(endpoint) }
                if credentials { try socket.setReceivesCredentials(true) }
                close = { try? socket.close() }
                Thread.detachNewThread { receiveDatagrams(socket, tally: tally) }
            case .seqpacket:
                let policy = serving.accessPolicy
                let listener = try ServingOptions.adopt(
                    passed, { (descriptor) throws(SocketError) in try SeqpacketListener(adopting: descriptor, admitting: policy, logger: logger) },
                    orBind: { () throws(SocketError) in try SeqpacketListener.bind(to: address, options: options, admitting: policy) })
                if listener.replacedStaleSocket { announceStaleReplaced(endpoint) }
                close = { try? listener.close() }
                let showCredentials = credentials
                Thread.detachNewThread { acceptConnections(listener, tally: tally, credentials: showCredentials) }
            }
        } catch let error as SocketError {
            report(Diagnosis.bind(error))
            throw ExitCode.failure
        }
        exitOnShutdownSignals(close)
        Console.standardError.line("uds: listening on \(shown)")
        defer { close() }
        switch tally.wait(timeout: timeout?.seconds) {
        case .done:
            return
        case .failed(let error):
            report(error)
            throw ExitCode.failure
        case .quiet(let received):
            guard let count else { return }
            Console.standardError.line(
                "uds: recv(\(endpoint)): timed out after \(timeout!) with no message (received \(received) of \(count))")
            throw ExitCode.failure
        }
    }
}

/// Prints messages as they come, counts them, and tells the main thread.
final class MessageTally: Sendable {
    enum Outcome {
        /// The count was reached.
        case done
        /// No message for the timeout; the number received so far.
        case quiet(Int)
        case failed(any Error)
    }

    private let limit: Int?
    private let raw: Bool
    private let state = Mutex<(received: Int, failure: (any Error)?)>((0, nil))
    private let event = DispatchSemaphore(value: 0)

    init(limit: Int?, raw: Bool) {
        self.limit = limit
        self.raw = raw
    }

    /// Prints one message; returns false once the count is reached (the
    /// caller stops receiving).
    func record(_ bytes: UnsafeRawBufferPointer, sender: String, credentials: PeerCredentials?) -> Bool {
        let more = state.withLock { state -> Bool in
            if let limit, state.received >= limit { return false }
            state.received += 1
            if raw {
                var line = Array(bytes)
                line.append(UInt8(ascii: "\n"))
                try? line.withUnsafeBytes { try StandardStreams.writeAll($0) }
            } else {
                let who = credentials.map { " " + describeCredentials($0) } ?? ""
                Console.standardOutput.line("received \(pythonBytesLiteral(bytes)) from \(sender)\(who)")
            }
            return limit.map { state.received < $0 } ?? true
        }
        event.signal()
        return more
    }

    func fail(_ error: any Error) {
        state.withLock { $0.failure = $0.failure ?? error }
        event.signal()
    }

    /// Waits until the count is reached, a receive fails, or `timeout`
    /// seconds pass without a message.
    func wait(timeout: Double?) -> Outcome {
        while true {
            let (received, failure) = state.withLock { ($0.received, $0.failure) }
            if let failure { return .failed(failure) }
            if let limit, received >= limit { return .done }
            let signalled: Bool
            if let timeout {
                signalled = event.wait(timeout: .now() + timeout) == .success
            } else {
                event.wait()
                signalled = true
            }
            if !signalled { return .quiet(received) }
        }
    }
}

private func receiveDatagrams(_ socket: DatagramSocket, tally: MessageTally) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumMessageSize, alignment: 1)
    defer { buffer.deallocate() }
    while true {
        let receipt: ReceivedMessage
        do {
            receipt = try socket.receive(into: buffer)
        } catch {
            yieldToShutdown()
            if error.code != .closed { tally.fail(error) }
            return
        }
        let sender = (receipt.sender ?? .unnamed).description
        if receipt.isTruncated {
            report(SocketError("recvmsg", address: sender,
                code: .messageTruncated(length: receipt.fullLength, capacity: maximumMessageSize)))
        }
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count])
        if !tally.record(bytes, sender: sender, credentials: receipt.credentials) { return }
    }
}

private func acceptConnections(_ listener: SeqpacketListener, tally: MessageTally, credentials: Bool) {
    while true {
        let socket: SeqpacketSocket
        let peer: UnixAddress
        do {
            (socket, peer) = try listener.accept()
        } catch {
            yieldToShutdown()
            if error.code == .closed { return }
            if AcceptFailure.isPassing(error) { continue }
            tally.fail(error)
            return
        }
        let who = credentials ? try? socket.peerCredentials() : nil
        Thread.detachNewThread {
            defer { try? socket.close() }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumMessageSize, alignment: 1)
            defer { buffer.deallocate() }
            while let receipt = try? socket.receive(into: buffer) {
                if receipt.count == 0 && !receipt.isTruncated { return }
                if receipt.isTruncated {
                    report(SocketError("recvmsg", address: peer.description,
                        code: .messageTruncated(length: receipt.fullLength, capacity: maximumMessageSize)))
                }
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count])
                if !tally.record(bytes, sender: peer.description, credentials: who) { return }
            }
        }
    }
}

/// Whether an accept failure is passing (an aborted connection, or out of
/// descriptors for a moment): then it waits a little and says so.
enum AcceptFailure {
    static func isPassing(_ error: SocketError) -> Bool {
        switch error.errno {
        case .connectionAbort?, .interrupted?:
            return true
        case .tooManyOpenFiles?, .tooManyOpenFilesInSystem?, .noBufferSpace?, .noMemory?:
            report(error)
            Thread.sleep(forTimeInterval: 0.1)
            return true
        default:
            return false
        }
    }
}
