import ArgumentParser
import Foundation
import Synchronization
import UDSKit

struct Connect: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "connect",
        abstract: "Connect to a socket and copy standard input to it and what it sends to standard output, like nc -U.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds connect <address> [--type <type>] [--timeout <timeout>] [options]",
        discussion: """
            ADDRESS is a socket path, @name (Linux abstract), unix:PATH, or tcp:HOST:PORT
            (TCP, with TCP_NODELAY). The copy is binary-safe. When standard input ends, the
            write side is shut down (the peer reads end-of-stream) and uds keeps printing
            until the peer closes; then it exits.

            When the peer ends its stream first, input is still sent for up to --linger
            (default 0.5s, like socat -t), or until it ends; then uds exits.

            With --type dgram or seqpacket each line of input is sent as one message and
            each message received is printed followed by a newline. A datagram client binds
            an address of its own (an abstract name on Linux) so the server can answer, and
            prints answers until --linger has passed after the end of input.

            Exit status: 0 when the peer closed the connection, 1 on an error (one line on
            standard error naming the address and the cause).

            Examples:
              uds connect ./uds_socket
              printf 'GET / HTTP/1.0\\r\\n\\r\\n' | uds connect /run/docker.sock
              uds connect tcp:127.0.0.1:8080 < request.bin > response.bin
              echo hello | uds connect @echo --type seqpacket
              printf 'one\\ntwo\\n' | uds connect /tmp/log.dgram --type dgram
            """
    )

    @Argument(help: "The server: PATH, @name, unix:PATH or tcp:HOST:PORT.")
    var address: String

    @Option(help: "The socket type: stream, dgram or seqpacket (Unix sockets only for the last two).")
    var type: SocketTypeOption = .stream

    @Option(parsing: .unconditional, help: "How long to try connecting: a duration, \(OptionRange.seconds.help).")
    var timeout: DurationOption?

    @Option(parsing: .unconditional, help: "How long input may still be sent after the peer ends its stream (dgram: answers are awaited after input ends): a duration, \(OptionRange.seconds.help).")
    var linger: DurationOption = DurationOption(seconds: 0.5)

    @Option(name: .customLong("bind"), help: "dgram: the address to receive answers at (by default a name of its own).")
    var localAddress: String?

    @Option(help: FrameOptions.frameHelp)
    var frame: FrameFormatOption?

    @Option(name: .customLong("max-frame"), parsing: .unconditional, help: FrameOptions.maxFrameHelp)
    var maxFrame: Int?

    @OptionGroup(title: "Dump")
    var dumpOptions: DumpOptions

    func validate() throws {
        try OptionRange.seconds.check("--timeout", timeout)
        try OptionRange.seconds.check("--linger", linger)
        try FrameOptions.check(frame, maxFrame: maxFrame)
        if frame != nil && type != .stream { throw ValidationError("--frame needs --type stream") }
    }

    func run() throws {
        let endpoint = try parseEndpoint(address)
        // Nothing bound yet: a signal during a slow connect ends it at once.
        if type != .dgram { exitOnShutdownSignals {} }
        let tap = try dumpOptions.makeDump()?.tap("stdio", endpoint.description)
        do {
            switch type {
            case .stream:
                let connection = try StreamSocket.connect(to: endpoint, timeout: timeout?.duration)
                if let format = FrameOptions.format(frame, maxFrame: maxFrame) {
                    try converse(FramedSession(connection: connection, format: format), lines: true)
                } else {
                    try converse(StreamSession(connection: connection, tap: tap), lines: false)
                }
            case .seqpacket:
                let server = try unixAddress(of: endpoint, for: "--type seqpacket")
                let socket = try SeqpacketSocket.connect(to: server)
                try converse(SeqpacketSession(socket: socket, peer: server.description, tap: tap), lines: true)
            case .dgram:
                try datagrams(to: try unixAddress(of: endpoint, for: "--type dgram"), tap: tap)
            }
        } catch let error as SocketError {
            if error.operation == "connect", let server = endpoint.unixAddress {
                report(Diagnosis.connect(error, to: server, as: type.socketType))
            } else {
                report(Diagnosis.bind(error))
            }
            throw ExitCode.failure
        }
    }

    /// Copies standard input to the session and the session to standard
    /// output; returns when the peer closes.
    private func converse(_ session: any Session, lines: Bool) throws {
        let router = InputRouter(lines: lines)
        router.attach(session, id: 1)
        router.start()
        exitOnShutdownSignals { session.close() }
        defer { session.close() }
        do {
            try session.copyToStandardOutput()
        } catch {
            yieldToShutdown()
            report(Diagnosis.peerClosed(error))
            throw ExitCode.failure
        }
        router.waitForInput(1, timeout: linger.seconds)
        if let failure = router.detach(1) {
            report(Diagnosis.peerClosed(failure))
            throw ExitCode.failure
        }
    }

    /// Sends each line as a datagram and prints the answers.
    private func datagrams(to server: UnixAddress, tap: DumpTap?) throws {
        let local = try localAddress.map(parseAddress) ?? automaticAddress()
        try requireBindable(.unix(local))
        let socket = try DatagramSocket.bind(to: local)
        exitOnShutdownSignals { try? socket.close() }
        defer { try? socket.close() }
        try socket.connect(to: server)
        Thread.detachNewThread {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maximumMessageSize, alignment: 1)
            defer { buffer.deallocate() }
            while let receipt = try? socket.receive(into: buffer) {
                tap?.record(.backward, UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count]))
                var line = Array(buffer[..<receipt.count])
                line.append(UInt8(ascii: "\n"))
                do {
                    try line.withUnsafeBytes { try StandardStreams.writeAll($0) }
                } catch {
                    return
                }
            }
        }
        let reader = InputReader(lines: true)
        do {
            while let line = try reader.next() {
                tap?.record(.forward, line)
                try socket.send(line)
            }
        } catch {
            report(error)
            throw ExitCode.failure
        }
        Thread.sleep(forTimeInterval: linger.seconds)
    }

    /// Where a datagram client receives answers: an abstract name with the
    /// pid on Linux (nothing to clean up), a path in /tmp elsewhere.
    private func automaticAddress() throws -> UnixAddress {
        let tag = "uds-connect-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
        #if os(Linux)
        return try parseAddress("@" + tag)
        #else
        return try parseAddress("/tmp/" + tag + ".sock")
        #endif
    }
}

struct Listen: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "listen",
        abstract: "Wait for a connection and copy standard input to it and what it sends to standard output, like nc -lU.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds listen <address> [--keep-open] [--type <type>] [options]",
        discussion: """
            ADDRESS is a socket path, @name (Linux abstract), unix:PATH, or tcp:[HOST:]PORT
            (TCP; the loopback address 127.0.0.1 unless a HOST such as 0.0.0.0 is named;
            port 0 picks a free port). Once bound, uds prints "uds: listening on ADDRESS" on
            standard error, with the actual port for TCP.

            The socket file is bound safely, as by echo-server: a stale socket file is
            replaced, a live server's socket and any other kind of file are never touched,
            and the file is removed on exit (also after SIGINT or SIGTERM).

            Without --keep-open, uds serves one connection: it stops listening once it has
            accepted it, and exits when the peer closes. With --keep-open it serves one
            connection after another until stopped; standard input goes to the connection
            of the moment. When standard input ends, each connection's write side is shut
            down. When a peer ends its stream first, input is still sent to it for up to
            --linger (default 0.5s, like socat -t), or until it ends.

            With --type seqpacket each line of input is one message, and each message
            received is printed followed by a newline. For datagrams, use uds recv.

            Examples:
              uds listen ./app.sock
              uds listen ./app.sock --keep-open > log.txt
              uds listen @debug --type seqpacket
              uds listen tcp:0                      # any free loopback port
              uds listen tcp:0.0.0.0:9000           # every interface
            """
    )

    @Argument(help: "Where to listen: PATH, @name, unix:PATH or tcp:[HOST:]PORT (or tcp-listen:[HOST:]PORT).")
    var address: String

    @Flag(help: "Serve one connection after another instead of exiting after the first.")
    var keepOpen = false

    @Option(name: .customLong("type"), help: "The socket type (datagrams: see uds recv).")
    var connectionType: ConnectionTypeOption = .stream
    var type: SocketTypeOption { connectionType.socketType }

    @Option(help: "The socket file's mode, in octal (e.g. 600).")
    var mode: FileModeOption?

    @Option(parsing: .unconditional, help: "How long input may still be sent after a peer ends its stream: a duration, \(OptionRange.seconds.help).")
    var linger: DurationOption = DurationOption(seconds: 0.5)

    @Option(help: FrameOptions.frameHelp)
    var frame: FrameFormatOption?

    @Option(name: .customLong("max-frame"), parsing: .unconditional, help: FrameOptions.maxFrameHelp)
    var maxFrame: Int?

    @OptionGroup(title: "Dump")
    var dumpOptions: DumpOptions

    @OptionGroup(title: "Access and activation")
    var serving: ServingOptions

    func validate() throws {
        try OptionRange.seconds.check("--linger", linger)
        try FrameOptions.check(frame, maxFrame: maxFrame)
        if frame != nil && type != .stream { throw ValidationError("--frame needs --type stream") }
    }

    func run() throws {
        // `tcp-listen:` and `unix-listen:` as relay spells them mean the same here.
        let endpoint: Endpoint
        switch try RelayEndpoint.parse(address) {
        case .listen(let listening), .connect(let listening): endpoint = listening
        case .stdio, .exec:
            Console.standardError.line("uds: listen: \(address) is not an address to listen on")
            throw ExitCode(64)
        }
        let logger = serving.logger
        let options = BindOptions(permissions: mode?.permissions, logger: logger)
        let policy = serving.accessPolicy
        let format = FrameOptions.format(frame, maxFrame: maxFrame)
        let dump = try dumpOptions.makeDump()
        do {
            // A socket a service manager passed wins over the address.
            let passed = try serving.passedSocket(logger: logger)
            if passed == nil { try requireBindable(endpoint) }
            let type = passed.flatMap(ServingOptions.type(of:)) ?? self.type
            let router = InputRouter(lines: type == .seqpacket || format != nil)
            let accept: () throws -> any Session
            let close: @Sendable () -> Void
            let shown: String
            switch type {
            case .dgram where passed != nil:
                Console.standardError.line("uds: listen: the activated socket is a datagram socket: serve it with uds recv")
                throw ExitCode(64)
            case .stream, .dgram:
                let listener = try ServingOptions.adopt(
                    passed, { (descriptor) throws(SocketError) in try StreamListener(adopting: descriptor, admitting: policy, logger: logger) },
                    orBind: { () throws(SocketError) in try StreamListener.bind(to: endpoint, options: options, admitting: policy) })
                if listener.replacedStaleSocket { announceStaleReplaced(endpoint) }
                shown = passed.map(ServingOptions.startupName(of:)) ?? (try? listener.localEndpoint().description) ?? endpoint.description
                accept = {
                    let (connection, peer) = try listener.accept()
                    guard let format else { return StreamSession(connection: connection, tap: dump?.tap("stdio", peer.description)) }
                    return FramedSession(connection: connection, format: format)
                }
                close = { try? listener.close() }
            case .seqpacket:
                let address = passed == nil ? try unixAddress(of: endpoint, for: "--type seqpacket") : .unnamed
                let listener = try ServingOptions.adopt(
                    passed, { (descriptor) throws(SocketError) in try SeqpacketListener(adopting: descriptor, admitting: policy, logger: logger) },
                    orBind: { () throws(SocketError) in try SeqpacketListener.bind(to: address, options: options, admitting: policy) })
                if listener.replacedStaleSocket { announceStaleReplaced(endpoint) }
                shown = passed.map(ServingOptions.startupName(of:)) ?? endpoint.description
                accept = {
                    let (socket, peer) = try listener.accept()
                    return SeqpacketSession(socket: socket, peer: peer.description, tap: dump?.tap("stdio", peer.description))
                }
                close = { try? listener.close() }
            }
            exitOnShutdownSignals(close)
            Console.standardError.line("uds: listening on \(shown)")
            router.start()
            var id = 0
            repeat {
                let session = try accept()
                if !keepOpen { close() }
                id += 1
                router.attach(session, id: id)
                do {
                    try session.copyToStandardOutput()
                } catch {
                    report(error)
                    if !keepOpen {
                        session.close()
                        throw ExitCode.failure
                    }
                }
                router.waitForInput(id, timeout: linger.seconds)
                if let failure = router.detach(id) {
                    report(failure)
                    if !keepOpen {
                        session.close()
                        throw ExitCode.failure
                    }
                }
                session.close()
            } while keepOpen
        } catch let error as SocketError {
            yieldToShutdown()
            report(Diagnosis.bind(error))
            throw ExitCode.failure
        }
    }
}

func announceStaleReplaced(_ endpoint: Endpoint) {
    Console.standardError.line("uds: removed stale socket file \(endpoint) (nobody was listening)")
}
