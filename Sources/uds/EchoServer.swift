import ArgumentParser
import Foundation
import Logging
import Synchronization
import SystemPackage
import UDSKit

struct EchoServer: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "echo-server",
        abstract: "Echo every byte back to its sender: the classic Unix domain socket demo.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds echo-server [<address>] [--type <type>] [--chunk <chunk>] [options]",
        discussion: """
            With --chunk 16 the output matches the classic Python echo server line for
            line. Unlike it, this server serves many clients at once; while more than one
            is connected, each line starts with [client N], and when a second client
            arrives, a line names the client whose untagged lines came before.

            A stale socket file (nobody listening) is replaced; a live server's socket or
            any other kind of file at the path is never touched. SIGINT or SIGTERM stop
            the server gracefully: it stops accepting and removes its socket file at
            once, lets connected clients finish for up to --grace seconds, then closes
            them and exits 0. A second signal exits at once.

            A peer refused by --allow-uid or --allow-gid is closed at once, unread: its
            client sees end-of-stream, or "broken pipe" if it writes first.

            Errors with single clients are rate-limited: the first of each kind is
            printed, and repeats within 10 s are counted in one line at the end of the
            10 s. With --quiet, clients that leave before reading their echo (broken
            pipe, connection reset) are only counted.

            Examples:
              uds echo-server
              uds echo-server /tmp/echo.sock --mode 600
              uds echo-server @echo --type seqpacket
              uds echo-server ./uds_socket --type dgram --chunk 16
              uds echo-server @private --allow-uid 1000 --show-peer
            """
    )

    @Argument(help: "The socket's path or @name.")
    var address: String = "./uds_socket"

    @Option(help: "The socket type: stream, dgram or seqpacket.")
    var type: SocketTypeOption = .stream

    @Option(parsing: .unconditional, help: "Bytes read at a time, \(OptionRange.bufferSize.help) (the classic server reads 16).")
    var chunk: Int = 65536

    @Option(help: "The socket file's mode, in octal (e.g. 600).")
    var mode: FileModeOption?

    @Flag(help: "Print only the start-up line and errors.")
    var quiet = false

    /// --allow-uid, --allow-gid, --activated and --log-level, as every listening command has them.
    @OptionGroup var serving: ServingOptions

    @Flag(help: "Print each client's pid, uid and gid (and on Linux its command name).")
    var showPeer = false

    @Option(help: "How the server runs: async (tasks on the event loop), handlers (stream only: readiness handlers on the loop, no task per connection) or threads (the blocking API; a thread per connection).")
    var io: IOModel = .async

    enum IOModel: String, ExpressibleByArgument, CaseIterable {
        case async
        case threads
        /// Stream only: readiness handlers on the loop, no task per connection.
        case handlers
    }

    @Option(help: "Where async connection tasks run: loop (the event-loop thread, no hops) or global (Swift's thread pool: a hop per wake-up, for comparison).")
    var executor: ExecutorChoice = .loop

    enum ExecutorChoice: String, ExpressibleByArgument, CaseIterable {
        case loop
        case global
    }

    @Option(help: "Event loops for --io async or handlers (threads; connections are spread over them). One loop is the main thread: a single-threaded server.")
    var loops: Int = 1

    @Option(help: FrameOptions.echoFrameHelp)
    var frame: FrameFormatOption?

    @Option(parsing: .unconditional, help: "After SIGINT or SIGTERM, how long clients may go on before they are closed (\(OptionRange.seconds.help)).")
    var grace: DurationOption = DurationOption(seconds: 5)

    @Option(name: .customLong("max-frame"), parsing: .unconditional, help: FrameOptions.maxFrameHelp)
    var maxFrame: Int?

    func validate() throws {
        try OptionRange.bufferSize.check("--chunk", chunk)
        try OptionRange.eventLoops.check("--loops", loops)
        try OptionRange.seconds.check("--grace", grace)
        if loops > 1 && io == .threads { throw ValidationError("--loops needs --io async or handlers") }
        if io == .handlers && type != .stream { throw ValidationError("--io handlers serves stream sockets only") }
        try FrameOptions.check(frame, maxFrame: maxFrame)
        if frame != nil && (type != .stream || io == .handlers) {
            throw ValidationError("--frame needs --type stream and --io async or threads")
        }
        // A datagram server has no connections to check or refuse: never
        // ignore an access restriction silently.
        if type == .dgram && (serving.restrictsPeers || showPeer) {
            throw ValidationError("--allow-uid, --allow-gid and --show-peer need connections: use --type stream or seqpacket")
        }
    }

    /// Synchronous on purpose: the async server's tasks are started on its
    /// event loop from here, and this thread waits. Nothing of the server then
    /// runs on the global executor, whose thread pool (libdispatch) aborts the
    /// process when its monitor cannot open a /proc file: exactly what happens
    /// to a server out of descriptors.
    func run() throws {
        let address = try parseAddress(address)
        try requireBindable(.unix(address))
        // Before the socket exists: a signal from then on stops the server cleanly.
        ShutdownSignals.prepare()
        raiseDescriptorLimit()
        let transcript = Transcript(quiet: quiet)
        let logger = serving.logger
        let options = BindOptions(permissions: mode?.permissions, onAcceptRecovery: { event in
            transcript.reportAcceptRecovery(event)
        }, logger: logger)
        let access = serving.accessPolicy
        do {
            // A socket a service manager passed wins over the address: serve on
            // it, whatever its type (and never unlink its file).
            let passed = try serving.passedSocket(logger: logger)
            @Sendable func make<Socket>(
                adopting adopt: (FileDescriptor) throws(SocketError) -> Socket, binding bind: () throws(SocketError) -> Socket
            ) throws(SocketError) -> Socket {
                try ServingOptions.adopt(passed, adopt, orBind: bind)
            }
            if let passed {
                transcript.always("starting up on \(ServingOptions.startupName(of: passed))")
            } else {
                transcript.always("starting up on \(address)")
            }
            if let passed, passed.type == "stream", !passed.isListening {
                // inetd-style (Accept=yes): the one connection, then exit.
                let connection = try StreamSocket(adopting: passed.descriptor)
                serveOne(StreamEchoConnection(socket: connection), transcript: transcript)
                return
            }
            let type = passed.flatMap(ServingOptions.type(of:)) ?? self.type
            switch type {
            case .stream where io != .threads:
                try withLoops { loops in
                    let listener = try make(
                        adopting: { (fd) throws(SocketError) in try AsyncStreamListener(adopting: fd, admitting: access, logger: logger, on: loops) },
                        binding: { () throws(SocketError) in try AsyncStreamListener.bind(to: address, options: options, admitting: access, on: loops) })
                    announce(replacedStale: listener.replacedStaleSocket, address: self.address)
                    // Returns once the server has shut down and its clients are gone.
                    if io == .handlers {
                        // Handlers are set on their socket's loop thread: the
                        // listener's, which with --loops is not the one this runs on.
                        try await withTaskExecutorPreference(listener.eventLoop) {
                            try await serveWithHandlers(listener, transcript: transcript, logger: logger)
                        }
                    } else {
                        try await serveAsync(listener, transcript: transcript, logger: logger)
                    }
                }
            case .stream:
                let listener = try make(
                    adopting: { (fd) throws(SocketError) in try StreamListener(adopting: fd, admitting: access, logger: logger) },
                    binding: { () throws(SocketError) in try StreamListener.bind(to: address, options: options, admitting: access) })
                try serveConnections(
                    replacedStale: listener.replacedStaleSocket,
                    accept: { () throws(SocketError) in
                        let (connection, peer) = try listener.accept()
                        return (StreamEchoConnection(socket: connection), peer.unixAddress ?? .unnamed)
                    },
                    close: { try? listener.close() }, transcript: transcript, logger: logger)
            case .seqpacket where io == .async:
                try withLoops { loops in
                    let listener = try make(
                        adopting: { (fd) throws(SocketError) in try AsyncSeqpacketListener(adopting: fd, admitting: access, logger: logger, on: loops) },
                        binding: { () throws(SocketError) in try AsyncSeqpacketListener.bind(to: address, options: options, admitting: access, on: loops) })
                    announce(replacedStale: listener.replacedStaleSocket, address: self.address)
                    try await serveAsync(listener, transcript: transcript, logger: logger)
                }
            case .dgram where io == .async:
                try withLoops { loops in
                    let socket = try make(
                        adopting: { (fd) throws(SocketError) in try AsyncDatagramSocket(adopting: fd, on: loops.next()) },
                        binding: { () throws(SocketError) in try AsyncDatagramSocket.bind(to: address, options: options, on: loops.next()) })
                    announce(replacedStale: socket.replacedStaleSocket, address: self.address)
                    ShutdownSignals.install { _ in
                        try? socket.close()
                        Foundation.exit(0)
                    }
                    try await serveAsync(socket, transcript: transcript)
                }
                // The loop ends when the handler closes the socket; returning now would
                // call exit() alongside the handler's (AddressSanitizer saw a double free).
                yieldToShutdown()
            case .seqpacket:
                let listener = try make(
                    adopting: { (fd) throws(SocketError) in try SeqpacketListener(adopting: fd, admitting: access, logger: logger) },
                    binding: { () throws(SocketError) in try SeqpacketListener.bind(to: address, options: options, admitting: access) })
                try serveConnections(
                    replacedStale: listener.replacedStaleSocket,
                    accept: { () throws(SocketError) in
                        let (connection, peer) = try listener.accept()
                        return (SeqpacketEchoConnection(socket: connection), peer)
                    },
                    close: { try? listener.close() }, transcript: transcript, logger: logger)
            case .dgram:
                let socket = try make(
                    adopting: { (fd) throws(SocketError) in try DatagramSocket(adopting: fd) },
                    binding: { () throws(SocketError) in try DatagramSocket.bind(to: address, options: options) })
                try serveDatagrams(socket: socket, transcript: transcript)
            }
        } catch {
            report((error as? SocketError).map(Diagnosis.bind) ?? error)
            throw ExitCode.failure
        }
    }

    private func announce(replacedStale: Bool, address: String) {
        if replacedStale {
            Console.standardError.line("uds: removed stale socket file \(address) (nobody was listening)")
        }
    }

    /// Serves the one connection of inetd-style activation, then returns.
    private func serveOne(_ connection: any EchoConnection, transcript: Transcript) {
        ShutdownSignals.install { _ in connection.close() }
        transcript.opened(1)
        echo(connection, peer: .unnamed, id: 1, chunk: chunk, showPeer: showPeer, transcript: transcript)
    }

    /// Runs `body` with the loops the server's sockets go on. With one loop
    /// (the default) the loop is this thread, signals are read on it too,
    /// and the process has no other thread (a C epoll server's shape: each
    /// system call is cheaper in a single-threaded process); with --loops N,
    /// a group of N loop threads, and this thread waits.
    private func withLoops(_ body: @escaping @Sendable (any EventLoopSource) async throws -> Void) throws {
        guard loops > 1 else {
            try EventLoop.runOnCurrentThread { loop in
                // If the loop cannot watch them, a thread of their own reads the signals.
                try? ShutdownSignals.watch(on: loop)
                try await body(loop)
            }
            return
        }
        let group = try EventLoopGroup(loopCount: loops)
        try runOnLoop(group.next()) { try await body(group) }
    }

    /// Runs `body` as a task on `loop` and waits for it on this thread.
    private func runOnLoop(_ loop: EventLoop, _ body: @escaping @Sendable () async throws -> Void) throws {
        let finished = DispatchSemaphore(value: 0)
        let outcome = Mutex<Result<Void, any Error>>(.success(()))
        Task(executorPreference: loop) {
            do {
                try await body()
            } catch {
                outcome.withLock { $0 = .failure(error) }
            }
            finished.signal()
        }
        finished.wait()
        try outcome.withLock { $0 }.get()
    }

    private func serveConnections(
        replacedStale: Bool,
        accept: () throws(SocketError) -> (any EchoConnection, UnixAddress),
        close: @escaping @Sendable () -> Void,
        transcript: Transcript, logger: Logger?
    ) throws(SocketError) {
        announce(replacedStale: replacedStale, address: address)
        // Closing the listener ends the accept loop below, which then drains.
        ShutdownSignals.install({ _ in close() }, onSecond: { _ in ShutdownSignals.exitProcess(0) })
        transcript.say("waiting for a connection")
        let open = OpenConnections()
        var nextID = 0
        while true {
            let connection: any EchoConnection
            let peer: UnixAddress
            do {
                // The listener gets through running out of descriptors itself.
                (connection, peer) = try accept()
            } catch {
                if ShutdownSignals.received.load(ordering: .acquiring) {
                    open.drain(within: grace.duration, logger: logger)
                    return
                }
                throw error
            }
            nextID += 1
            let id = nextID
            transcript.opened(id)
            open.opened(id) { connection.close() }
            let chunk = self.chunk
            let showPeer = self.showPeer
            let format = FrameOptions.format(frame, maxFrame: maxFrame)
            Thread.detachNewThread {
                defer { open.closed(id) }
                if let format, let stream = connection as? StreamEchoConnection {
                    echoFrames(stream.socket, format: format, peer: peer, id: id, showPeer: showPeer, transcript: transcript)
                    return
                }
                echo(connection, peer: peer, id: id, chunk: chunk, showPeer: showPeer, transcript: transcript)
            }
        }
    }

    private func serveDatagrams(socket: DatagramSocket, transcript: Transcript) throws(SocketError) {
        announce(replacedStale: socket.replacedStaleSocket, address: address)
        ShutdownSignals.install { _ in try? socket.close() }
        transcript.say("waiting for a message")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let receipt: ReceivedMessage
            do {
                receipt = try socket.receive(into: buffer)
            } catch {
                if ShutdownSignals.received.load(ordering: .acquiring) { return }
                throw error
            }
            if ShutdownSignals.received.load(ordering: .acquiring) { return }
            let message = UnsafeRawBufferPointer(rebasing: buffer[..<receipt.count])
            guard let sender = replyAddress(for: message, receipt, transcript: transcript) else { continue }
            do {
                try socket.send(message, to: sender)
            } catch {
                transcript.report(error)  // The client went away; keep serving the others.
            }
        }
    }
}

extension EchoServer {
    /// Prints a received datagram the classic way and says where its echo goes:
    /// `nil` for a sender that did not bind an address, which cannot be answered.
    func replyAddress(
        for message: UnsafeRawBufferPointer, _ receipt: ReceivedMessage, transcript: Transcript
    ) -> UnixAddress? {
        let sender = receipt.sender ?? .unnamed
        transcript.say("received \(pythonBytesLiteral(message)) from \(sender.classicText)")
        if receipt.isTruncated {
            transcript.report(SocketError("recvmsg", address: sender.description,
                code: .messageTruncated(length: receipt.fullLength, capacity: chunk)))
        }
        guard sender.kind != .unnamed else {
            ServerReports.line(key: "unnamed sender", "uds: sendto: cannot reply: the sender did not bind an address") {
                "uds: sendto: cannot reply to \($0) more senders that did not bind an address, in the last \(ServerReports.interval)"
            }
            return nil
        }
        transcript.say("sending data back to \(sender)")
        return sender
    }
}

/// One connection of the echo server, stream or seqpacket.
protocol EchoConnection: Sendable {
    /// Reads up to `chunk` bytes (one message for seqpacket); empty at the end.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> (count: Int, truncated: Bool)
    func sendAll(_ buffer: UnsafeRawBufferPointer) throws(SocketError)
    func peerCredentials() -> PeerCredentials?
    func peerProcess() -> PeerProcess?
    func close()
}

struct StreamEchoConnection: EchoConnection {
    let socket: StreamSocket
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> (count: Int, truncated: Bool) {
        (try socket.read(into: buffer), false)
    }
    func sendAll(_ buffer: UnsafeRawBufferPointer) throws(SocketError) { try socket.writeAll(buffer) }
    func peerCredentials() -> PeerCredentials? { try? socket.peerCredentials() }
    func peerProcess() -> PeerProcess? { try? socket.peerProcess() }
    func close() { try? socket.close() }
}

struct SeqpacketEchoConnection: EchoConnection {
    let socket: SeqpacketSocket
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> (count: Int, truncated: Bool) {
        let receipt = try socket.receive(into: buffer)
        return (receipt.count, receipt.isTruncated)
    }
    func sendAll(_ buffer: UnsafeRawBufferPointer) throws(SocketError) { try socket.send(buffer) }
    func peerCredentials() -> PeerCredentials? { try? socket.peerCredentials() }
    func peerProcess() -> PeerProcess? { try? socket.peerProcess() }
    func close() { try? socket.close() }
}

/// Serves one connection the way the classic server does: print, echo, repeat.
private func echo(
    _ connection: any EchoConnection, peer: UnixAddress, id: Int, chunk: Int, showPeer: Bool, transcript: Transcript
) {
    defer {
        connection.close()
        transcript.closed(id)
    }
    transcript.connected(
        peer, client: id,
        identity: showPeer ? { PeerIdentity(credentials: connection.peerCredentials(), process: connection.peerProcess()) } : nil)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 1)
    defer { buffer.deallocate() }
    do {
        while true {
            let (count, truncated) = try connection.receive(into: buffer)
            let data = UnsafeRawBufferPointer(rebasing: buffer[..<count])
            transcript.say("received \(pythonBytesLiteral(data))", client: id)
            if count == 0 && !truncated {
                transcript.say("no data from \(peer.classicText)", client: id)
                return
            }
            if truncated {
                transcript.report(SocketError("recvmsg", address: peer.description,
                    code: .messageTruncated(length: nil, capacity: chunk)))
            }
            transcript.say("sending data back to the client", client: id)
            try connection.sendAll(data)
        }
    } catch {
        if !ShutdownSignals.received.load(ordering: .acquiring) { transcript.report(error) }
    }
}

/// `pid=1234 uid=1000 gid=1000 command=python3`: the command name only on
/// Linux, where /proc tells it.
func describe(_ credentials: PeerCredentials, process: PeerProcess? = nil) -> String {
    var text = credentials.description
    // Through the pidfd where there is one: the name is that process's, not
    // a successor's that reused the pid.
    if let name = process?.commandName {
        text += " command=" + name
        return text
    }
    #if os(Linux)
    if process == nil, let pid = credentials.processID,
        let name = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)
    {
        text += " command=" + name.trimmingCharacters(in: .newlines)
    }
    #endif
    return text
}

/// What --show-peer prints: the kernel's credentials and the peer process.
struct PeerIdentity {
    var credentials: PeerCredentials?
    var process: PeerProcess?
}

extension UnixAddress {
    /// As Python prints a client address: empty for an unnamed client, a path
    /// as it is (without the escapes of `description`).
    var classicText: String {
        switch kind {
        case .unnamed: ""
        case .path: path ?? ""
        case .abstract: description
        }
    }
}

/// How the servers report what goes wrong with single clients or messages:
/// rate-limited (see ``RateLimitedLines``), so that a flood of clients cannot
/// flood standard error. Failures that differ only in the address count as one.
enum ServerReports {
    static var interval: String { RateLimitedLines.standardError.intervalText }

    /// An error, printed as `report` does unless the same failure was printed
    /// within the interval.
    static func report(_ error: any Error) {
        let key = failure(error)
        RateLimitedLines.standardError.line(key: key, { "uds: \(error)" }) { "uds: \(key): \($0) more in the last \(interval)" }
    }

    /// A line under `key`; `summary(count)` says what the lines counted were.
    static func line(key: String, _ line: @autoclosure () -> String, summary: @escaping @Sendable (Int) -> String) {
        RateLimitedLines.standardError.line(key: key, line, summary: summary)
    }

    /// Whether `error` means only that the client left before its echo was
    /// written (or, for a datagram client, before it could be sent): normal
    /// for a server, not a fault of it.
    static func isClientGone(_ error: any Error) -> Bool {
        guard let errno = (error as? SocketError)?.errno else { return false }
        return [.brokenPipe, .connectionReset, .socketNotConnected, .connectionRefused, .noSuchFileOrDirectory]
            .contains(errno)
    }

    /// One count for every client that left early, whatever the error.
    static func clientGone(_ error: any Error) {
        line(key: "client gone", "uds: a client left before reading its echo (\(failure(error))); more are counted, one line per \(interval) at most") {
            $0 == 1 ? "uds: 1 client left before reading its echo in the last \(interval)"
                : "uds: \($0) clients left before reading their echo in the last \(interval)"
        }
    }

    /// The failure without the address: `write: broken pipe`.
    private static func failure(_ error: any Error) -> String {
        guard let error = error as? SocketError else { return "\(error)" }
        return "\(error.operation): \(error.reason)"
    }
}

/// The server's printed lines. While more than one client is connected, each
/// line about a client names it, so concurrent transcripts can be told apart;
/// with one client at a time the output is the classic transcript exactly.
/// The lone client's lines before an overlap carry no name, so when a second
/// client arrives, one line names the client those lines belonged to.
final class Transcript: Sendable {
    let isQuiet: Bool
    /// The clients connected now.
    private let active = Mutex<Set<Int>>([])

    init(quiet: Bool) {
        isQuiet = quiet
    }

    /// A line printed even with --quiet.
    func always(_ line: String) {
        Console.standardOutput.line(line)
    }

    /// An error serving one client. With --quiet, clients that left early are
    /// only counted; everything else is reported, rate-limited.
    /// How the listener got through an accept failure: one line per kind,
    /// rate-limited, also with --quiet (it is what the operator must know).
    func reportAcceptRecovery(_ event: AcceptRecoveryEvent) {
        let key: String
        switch event {
        case .shedConnection: key = "out of descriptors: closed pending connections"
        case .pausing: key = "accept paused"
        case .credentialsUnavailable: key = "refused peers whose credentials could not be read"
        }
        ServerReports.line(key: key, "uds: \(event)") { "uds: \(key): \($0) more in the last \(ServerReports.interval)" }
    }

    func report(_ error: any Error) {
        if isQuiet && ServerReports.isClientGone(error) {
            ServerReports.clientGone(error)
        } else {
            ServerReports.report(error)
        }
    }

    func say(_ line: @autoclosure () -> String, client: Int? = nil) {
        guard !isQuiet else { return }
        let line = line()
        active.withLock { active in
            if let client, active.count > 1 {
                Console.standardOutput.line("[client \(client)] \(line)")
            } else {
                Console.standardOutput.line(line)
            }
        }
    }

    /// The classic `connection from` line and, with --show-peer, who it is.
    func connected(_ peer: UnixAddress, client: Int, identity: (() -> PeerIdentity)?) {
        say("connection from \(peer.classicText)", client: client)
        if let identity {
            let peer = identity()
            say("peer \(peer.credentials.map { describe($0, process: peer.process) } ?? "credentials unavailable")", client: client)
        }
    }

    func opened(_ client: Int) {
        active.withLock { active in
            // Under the lock, so no untagged line of the lone client can follow this one.
            if active.count == 1, let alone = active.first, !isQuiet {
                Console.standardOutput.line("[client \(alone)] (the untagged lines since its connection were client \(alone)'s)")
            }
            active.insert(client)
        }
    }

    func closed(_ client: Int) {
        let idle = active.withLock { active in
            active.remove(client)
            return active.isEmpty
        }
        if idle { say("waiting for a connection") }
    }
}
