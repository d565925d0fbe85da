import ArgumentParser
import Foundation
import UDSKit

struct EchoClient: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "echo-client",
        abstract: "Send a message to an echo server; print the echo.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds echo-client [<address>] [--message <message>] [options]",
        discussion: """
            With the defaults the output matches the classic Python echo client line for
            line: it sends the message once and reads the echo back 16 bytes at a time.

            In dgram mode the client binds an address of its own so the server can
            answer: @uds-echo-client-PID when the server has an abstract name, otherwise
            a path next to the server's, PATH.client-PID. The client removes that file
            when it exits, also after an error or a signal.

            Examples:
              uds echo-client
              uds echo-client /tmp/echo.sock --message hello --chunk 4
              uds echo-client --bind ./client-$$.sock
              uds echo-client ./uds_socket --type dgram
            """
    )

    @Argument(help: "The server's socket path, or @name for a Linux abstract name.")
    var address: String = "./uds_socket"

    @Option(help: "The message to send.")
    var message: String = "This is the message. It will be repeated."

    @Option(parsing: .unconditional, help: "Bytes per read (stream), or the largest reply (dgram, seqpacket); \(OptionRange.bufferSize.help).")
    var chunk: Int = 16

    @Option(help: "The socket type: stream, dgram or seqpacket.")
    var type: SocketTypeOption = .stream

    @Option(help: "Bind this address first, so the server sees who is calling (a path with the pid, say).")
    var bind: String?

    @Option(parsing: .unconditional, help: "How long to wait for each reply before giving up: a duration, \(OptionRange.positiveSeconds.help).")
    var timeout = DurationOption(seconds: 10)

    func validate() throws {
        try OptionRange.bufferSize.check("--chunk", chunk)
        try OptionRange.positiveSeconds.check("--timeout", timeout)
    }

    func run() throws {
        let server = try parseAddress(address)
        var local = try bind.map(parseAddress)
        if type == .dgram && local == nil {
            local = try parseAddress(Self.defaultDatagramName(for: server))
        }
        let message = Array(self.message.utf8)
        // With no file of its own yet to remove, a signal during a slow
        // connect ends the client at once instead of waiting for it.
        if local == nil { exitOnShutdownSignals {} }
        do {
            switch type {
            case .stream: try runStream(server: server, local: local, message: message)
            case .seqpacket: try runSeqpacket(server: server, local: local, message: message)
            case .dgram: try runDatagram(server: server, local: local!, message: message)
            }
        } catch {
            yieldToShutdown()
            report(error)
            throw ExitCode.failure
        }
    }

    private var replyTimeout: Duration { timeout.duration }

    static func defaultDatagramName(for server: UnixAddress) -> String {
        let pid = ProcessInfo.processInfo.processIdentifier
        return server.kind == .abstract ? "@uds-echo-client-\(pid)" : "\(server).client-\(pid)"
    }

    private func say(_ line: String) {
        Console.standardOutput.line(line)
    }

    /// Prints a message reply; a reply cut to fit is an error, not an echo.
    private func sayReply(_ reply: [UInt8], _ receipt: ReceivedMessage, from server: UnixAddress) throws(SocketError) {
        say("received \(pythonBytesLiteral(reply))")
        if receipt.isTruncated {
            throw SocketError("recvmsg", address: server.description,
                code: .messageTruncated(length: receipt.fullLength, capacity: reply.count))
        }
    }

    private func runStream(server: UnixAddress, local: UnixAddress?, message: [UInt8]) throws(SocketError) {
        say("connecting to \(server)")
        let socket = try StreamSocket.connect(to: server, from: local)
        exitOnShutdownSignals { try? socket.close() }
        defer {
            say("closing socket")
            try? socket.close()
        }
        say("sending \(pythonBytesLiteral(message))")
        try socket.writeAll(message)
        var received = 0
        while received < message.count {
            let data = try socket.read(upTo: chunk, timeout: replyTimeout)
            if data.isEmpty {
                throw SocketError("read", address: server.description,
                    code: .unexpectedEndOfStream(received: received, expected: message.count))
            }
            received += data.count
            say("received \(pythonBytesLiteral(data))")
        }
    }

    private func runSeqpacket(server: UnixAddress, local: UnixAddress?, message: [UInt8]) throws(SocketError) {
        say("connecting to \(server)")
        let socket = try SeqpacketSocket.connect(to: server, from: local)
        exitOnShutdownSignals { try? socket.close() }
        defer {
            say("closing socket")
            try? socket.close()
        }
        say("sending \(pythonBytesLiteral(message))")
        try socket.send(message)
        let (reply, receipt) = try socket.receive(maximumSize: max(chunk, message.count), timeout: replyTimeout)
        if reply.isEmpty && !receipt.isTruncated {
            throw SocketError("recvmsg", address: server.description,
                code: .unexpectedEndOfStream(received: 0, expected: message.count))
        }
        try sayReply(reply, receipt, from: server)
    }

    private func runDatagram(server: UnixAddress, local: UnixAddress, message: [UInt8]) throws(SocketError) {
        say("connecting to \(server)")
        // The client's own name must not replace anything: a live socket or
        // another file there is an error, like for any bind.
        let socket = try DatagramSocket.bind(to: local)
        exitOnShutdownSignals { try? socket.close() }
        defer {
            say("closing socket")
            try? socket.close()
        }
        say("bound to \(local)")
        try socket.connect(to: server)
        say("sending \(pythonBytesLiteral(message))")
        try socket.send(message)
        let (reply, receipt) = try socket.receive(maximumSize: max(chunk, message.count), timeout: replyTimeout)
        try sayReply(reply, receipt, from: server)
    }
}
