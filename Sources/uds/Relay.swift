import ArgumentParser
import Foundation
import Synchronization
import UDSKit

struct Relay: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Relay bytes both ways between two endpoints, like socat: Unix sockets, TCP, standard I/O.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds relay <from> <to> [--max-conns <max-conns>] [--once] [options]",
        discussion: """
            FROM is where connections come from; TO is what each of them is relayed to:

              PATH, unix:PATH        connect to a Unix socket path
              @name, abstract:name   connect to a Linux abstract socket
              tcp:HOST:PORT          connect over TCP (tcp:[::1]:PORT for IPv6)
              unix-listen:PATH       FROM only: listen at a path (or unix-listen:@name)
              tcp-listen:[HOST:]PORT FROM only: listen on a TCP port; the loopback address
                                     127.0.0.1 unless a HOST such as 0.0.0.0 or [::] is
                                     named; port 0 picks a free port
              stdio                  standard input and output
              exec:CMD               run /bin/sh -c CMD (for each connection, as TO), its
                                     standard input and output the stream (like socat
                                     EXEC:); it reads end-of-file when the peer half-closes

            With a listening FROM, each accepted connection gets its own connection to TO
            and is relayed independently, at most --max-conns at once (more wait in the
            listen backlog), until SIGINT or SIGTERM (or after one, with --once). Once
            bound, uds prints "uds: listening on ENDPOINT" on standard error, with the
            actual port for TCP. Otherwise FROM and TO are opened once, relayed, and uds
            exits.

            Each direction copies through one fixed 64 KiB buffer: a side that reads slowly
            holds the other back (back-pressure); nothing is queued without bound. When one
            side ends its stream, the other side's write direction is shut down (half-close),
            and the opposite direction goes on until it ends too; then both are closed. An
            error in either direction closes both. TCP connections have TCP_NODELAY on.

            This is how a Unix socket service reaches beyond one host, and back.

            With --type seqpacket both Unix sides are seqpacket sockets and each message is
            relayed whole (up to 256 KiB, or the kernel's send buffer if smaller; a longer
            one is an error, never cut); standard input's chunks become messages. An empty
            message reads as the end, as it does for every seqpacket reader.

            With --type dgram FROM is unix-listen:ADDRESS, bound as a datagram socket. Each
            sender that has an address gets its own socket towards TO (at most --max-conns;
            the least recently used is closed first, or any quiet for --idle-timeout), and
            TO's answers go back to that sender. Datagrams from unnamed senders are
            forwarded, but cannot be answered.

            Byte streams between two sockets are moved with splice(2) on Linux, without
            passing through uds (--no-splice: through its buffer).

            Exit status: 0 at the normal end, 1 on an error (one line on standard error,
            naming the endpoint and the cause). With a listening FROM, failures of single
            connections are reported and the relay goes on.

            Examples:
              uds relay tcp-listen:8080 unix:/run/app.sock       # expose a service on TCP
              uds relay unix-listen:/tmp/db.sock tcp:db.internal:5432
              uds relay tcp-listen:0.0.0.0:2375 /var/run/docker.sock --max-conns 8
              uds relay stdio @debug                             # like uds connect
              uds relay unix-listen:./up.sock 'exec:tr a-z A-Z'  # a command per connection
              uds relay unix-listen:./front.sock ./app.sock --dump-text --idle-timeout 30s
              uds relay unix-listen:./log.dgram /run/log.dgram --type dgram
            """
    )

    @Argument(help: "Where connections come from: a listening endpoint, an endpoint to connect to, or stdio.")
    var from: String

    @Argument(help: "Where each connection is relayed to: an endpoint to connect to, or stdio.")
    var to: String

    @Option(name: .customLong("max-conns"), parsing: .unconditional, help: "Connections at once, \(OptionRange.connections.help).")
    var maxConnections = 100

    @Flag(help: "Relay one connection, then exit.")
    var once = false

    @Flag(name: [.short, .long], help: "Log each connection and its byte counts to stderr.")
    var verbose = false

    @Option(parsing: .unconditional, help: "Give up connecting to TO after this long: a duration, \(OptionRange.seconds.help).")
    var timeout: DurationOption?

    @Option(help: "The socket type of both Unix sides: stream, seqpacket (each message relayed whole) or dgram.")
    var type: SocketTypeOption = .stream

    @Option(help: "unix-listen: the socket file's mode, in octal (660).")
    var mode: FileModeOption?

    @Option(parsing: .unconditional, help: "Close a connection after this long with no byte either way, like socat -T (seconds, or with ms/s/m; \(OptionRange.positiveSeconds.text)).")
    var idleTimeout: DurationOption?

    @Flag(help: "Copy through the buffer even where splice(2) could move the bytes (Linux; for comparison).")
    var noSplice = false

    @OptionGroup(title: "Dump")
    var dumpOptions: DumpOptions

    @OptionGroup(title: "Access and activation (unix-listen: and tcp-listen:)")
    var serving: ServingOptions

    func validate() throws {
        try serving.checkConnections(for: type)
        try OptionRange.connections.check("--max-conns", maxConnections)
        try OptionRange.seconds.check("--timeout", timeout)
        try OptionRange.positiveSeconds.check("--idle-timeout", idleTimeout)
        if type == .dgram && once { throw ValidationError("--once needs connections; datagrams have none") }
    }

    func run() throws {
        let source = try RelayEndpoint.parse(from)
        let target = try RelayEndpoint.parse(to)
        if case .listen = target {
            Console.standardError.line("uds: \(to): TO cannot listen; name an endpoint to connect to, or stdio")
            throw ExitCode(64)
        }
        if case .stdio = source, case .stdio = target {
            Console.standardError.line("uds: relay: FROM and TO cannot both be stdio")
            throw ExitCode(64)
        }
        // A socket a service manager passed is FROM, whatever FROM names.
        let passed: ActivatedSockets.Passed?
        do {
            passed = try serving.passedSocket(logger: serving.logger)
        } catch {
            report(error)
            throw ExitCode.failure
        }
        if passed != nil, case .listen = source {} else if passed != nil {
            Console.standardError.line("uds: relay: an activated socket needs FROM to be unix-listen: or tcp-listen:")
            throw ExitCode(64)
        }
        let type = passed.flatMap(ServingOptions.type(of:)) ?? self.type
        if case .listen(let endpoint) = source, passed == nil { try requireBindable(endpoint) }
        let dump = try dumpOptions.makeDump()
        // Splicing needs the bytes to stay out of this process: not when dumping.
        let splicing = Splice.isAvailable && !noSplice && dump == nil
        // A splice into a socket whose peer has gone raises SIGPIPE (it takes
        // no MSG_NOSIGNAL); the failed write is reported instead. Only where
        // both sides are sockets: a relay into a pipeline still ends on SIGPIPE.
        if splicing && source.isSocket && target.isSocket { signal(SIGPIPE, SIG_IGN) }
        let log = RelayLog(verbose: verbose, dump: dump, idleTimeout: idleTimeout?.seconds, splicing: splicing)
        let connectTimeout = timeout?.duration
        switch source {
        case .listen(let endpoint) where type == .dgram:
            if serving.restrictsPeers {
                Console.standardError.line("uds: relay: the activated socket is a datagram socket, which has no connections to refuse")
                throw ExitCode(64)
            }
            try serveDatagrams(endpoint, passed: passed, target: target, log: log)
        case .listen(let endpoint):
            try serve(endpoint, passed: passed, type: type, target: target, log: log, connectTimeout: connectTimeout)
        case .connect, .stdio, .exec:
            guard type != .dgram else {
                Console.standardError.line("uds: relay --type dgram: FROM must be unix-listen:ADDRESS (for one client, use uds connect --type dgram)")
                throw ExitCode(64)
            }
            exitOnShutdownSignals {}
            do {
                let first = try source.open(timeout: connectTimeout, type: type)
                let second: any ByteStream
                do {
                    second = try target.open(timeout: connectTimeout, type: type)
                } catch {
                    first.close()
                    throw error
                }
                log.opened(1, from: source.description, to: target.description)
                if !relayBothWays(first, second, id: 1, log: log) { throw ExitCode.failure }
            } catch let error as SocketError {
                report(error)
                throw ExitCode.failure
            }
        }
    }

    /// Receives datagrams at `endpoint` and relays them to `target`, and the
    /// answers back.
    private func serveDatagrams(_ endpoint: Endpoint, passed: ActivatedSockets.Passed?, target: RelayEndpoint, log: RelayLog) throws {
        guard let front = endpoint.unixAddress, case .connect(let to) = target, let upstream = to.unixAddress else {
            Console.standardError.line("uds: relay --type dgram: both sides must be Unix socket addresses")
            throw ExitCode(64)
        }
        let relay: DatagramRelay
        do {
            let socket = try ServingOptions.adopt(
                passed, { (descriptor) throws(SocketError) in try DatagramSocket(adopting: descriptor) },
                orBind: { () throws(SocketError) in try DatagramSocket.bind(to: front, options: BindOptions(permissions: mode?.permissions, logger: serving.logger)) })
            if socket.replacedStaleSocket { announceStaleReplaced(endpoint) }
            relay = DatagramRelay(front: socket, target: upstream, log: log, maximumPeers: maxConnections)
        } catch {
            report(Diagnosis.bind(error))
            throw ExitCode.failure
        }
        exitOnShutdownSignals { relay.close() }
        Console.standardError.line("uds: listening on \(passed.map(ServingOptions.startupName(of:)) ?? endpoint.description)")
        do {
            try relay.run()
        } catch {
            yieldToShutdown()
            report(error)
            throw ExitCode.failure
        }
    }

    /// Accepts connections at `endpoint` and relays each to `target`.
    private func serve(
        _ endpoint: Endpoint, passed: ActivatedSockets.Passed?, type: SocketTypeOption, target: RelayEndpoint, log: RelayLog,
        connectTimeout: Duration?
    ) throws {
        let listener: RelayListener
        do {
            listener = try RelayListener.bind(
                endpoint, passed: passed, type: type, options: BindOptions(permissions: mode?.permissions, logger: serving.logger),
                admitting: serving.accessPolicy)
        } catch {
            report(Diagnosis.bind(error))
            throw ExitCode.failure
        }
        if listener.replacedStaleSocket { announceStaleReplaced(endpoint) }
        exitOnShutdownSignals { listener.close() }
        Console.standardError.line("uds: listening on \(listener.shown)")

        // Standard output can take one connection only.
        let single: Bool
        if case .stdio = target { single = true } else { single = once }
        let slots = DispatchSemaphore(value: single ? 1 : maxConnections)
        var id = 0
        while true {
            slots.wait()
            let first: any ByteStream
            let peer: String
            do {
                (first, peer) = try listener.accept()
            } catch {
                if AcceptFailure.isPassing(error) {
                    slots.signal()
                    continue
                }
                yieldToShutdown()
                report(error)
                listener.close()
                throw ExitCode.failure
            }
            id += 1
            let number = id
            let work: @Sendable () -> Bool = {
                defer { slots.signal() }
                let second: any ByteStream
                do {
                    second = try target.open(timeout: connectTimeout, type: type)
                } catch {
                    report(error)
                    first.close()
                    return false
                }
                log.opened(number, from: peer, to: target.description)
                return relayBothWays(first, second, id: number, log: log)
            }
            if single {
                listener.close()
                if !work() { throw ExitCode.failure }
                return
            }
            Thread.detachNewThread { _ = work() }
        }
    }
}

/// One side of a relay, as the command line names it.
enum RelayEndpoint: CustomStringConvertible {
    case connect(Endpoint)
    case listen(Endpoint)
    case stdio
    case exec(String)

    static func parse(_ text: String) throws -> RelayEndpoint {
        do {
            return try parsing(text)
        } catch {
            report(error)
            throw ExitCode.failure
        }
    }

    private static func parsing(_ text: String) throws(SocketError) -> RelayEndpoint {
        let lowered = text.lowercased()
        if lowered == "stdio" || text == "-" { return .stdio }
        if lowered.hasPrefix("exec:") {
            let command = String(text.dropFirst("exec:".count))
            guard !command.isEmpty else { throw SocketError("exec", address: text, code: .invalidAddress("no command after exec:")) }
            return .exec(command)
        }
        if lowered.hasPrefix("tcp-listen:") {
            do {
                return .listen(try Endpoint("tcp:" + text.dropFirst("tcp-listen:".count)))
            } catch {
                var renamed = error
                renamed.address = text
                throw renamed
            }
        }
        if lowered.hasPrefix("unix-listen:") {
            return .listen(.unix(try UnixAddress(String(text.dropFirst("unix-listen:".count)))))
        }
        return .connect(try Endpoint(text))
    }

    /// Whether this side is a socket, which the relay may splice.
    var isSocket: Bool {
        switch self {
        case .connect, .listen: true
        case .stdio, .exec: false
        }
    }

    var description: String {
        switch self {
        case .connect(let endpoint): endpoint.description
        case .listen(let endpoint): endpoint.isTCP ? "tcp-listen:" + endpoint.description.dropFirst(4) : "unix-listen:\(endpoint)"
        case .stdio: "stdio"
        case .exec(let command): "exec:" + command
        }
    }

    /// Opens a connect endpoint, standard I/O or a command; a seqpacket
    /// endpoint relays whole messages.
    func open(timeout: Duration?, type: SocketTypeOption = .stream) throws(SocketError) -> any ByteStream {
        switch self {
        case .connect(let endpoint) where type == .seqpacket:
            guard let address = endpoint.unixAddress else {
                throw SocketError("connect", address: endpoint.description, code: .invalidArgument("seqpacket needs a Unix socket address"))
            }
            do {
                return SeqpacketStream(socket: try SeqpacketSocket.connect(to: address), peer: address.description)
            } catch where error.operation == "connect" {
                throw Diagnosis.connect(error, to: address, as: .seqpacket, suggesting: false)
            }
        case .connect(let endpoint):
            do {
                return ConnectionStream(
                    connection: try StreamSocket.connect(to: endpoint, timeout: timeout), name: endpoint.description)
            } catch {
                guard let address = endpoint.unixAddress else { throw error }
                throw Diagnosis.connect(error, to: address, as: .stream, suggesting: false)
            }
        case .stdio:
            return StdioStream()
        case .exec(let command):
            return try ExecStream.start(command)
        case .listen(let endpoint):
            throw SocketError("connect", address: endpoint.description, code: .invalidArgument("a listening endpoint"))
        }
    }
}

/// One side of a relay: bytes in, bytes out, and a way to say "no more".
protocol ByteStream: Sendable {
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    func writeAll(_ buffer: UnsafeRawBufferPointer) throws
    /// No more writes: the other end reads end-of-stream (half-close).
    func closeWrite()
    /// Ends everything, and wakes calls blocked on other threads where it can.
    func close()
}

struct ConnectionStream: ByteStream {
    let connection: StreamSocket
    /// What errors name: the endpoint connected to, or the listener's.
    let name: String

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { try connection.read(into: buffer) }
    func writeAll(_ buffer: UnsafeRawBufferPointer) throws { try connection.writeAll(buffer) }
    func closeWrite() { try? connection.shutdown(.write) }
    func close() { try? connection.close() }
}

struct StdioStream: ByteStream {
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { try StandardStreams.read(into: buffer) }
    func writeAll(_ buffer: UnsafeRawBufferPointer) throws { try StandardStreams.writeAll(buffer) }
    func closeWrite() { StandardStreams.endOutput() }
    /// A read of standard input cannot be woken; the process's exit ends it.
    func close() {}
}

/// Relays `first` and `second` both ways until both directions have ended,
/// then closes both. Returns false if either direction failed (reported).
func relayBothWays(_ first: any ByteStream, _ second: any ByteStream, id: Int, log: RelayLog) -> Bool {
    let (first, second) = log.tapped(first, second, id: id)
    let session = RelaySession(first, second, splicing: log.splicing)
    let ended = DispatchSemaphore(value: 0)
    if let idle = log.idleTimeout {
        Thread.detachNewThread { session.watch(idle: idle, until: ended) }
    }
    defer { ended.signal() }
    let forwardDone = DispatchSemaphore(value: 0)
    let forward = Mutex<(bytes: Int, ok: Bool)>((0, true))
    Thread.detachNewThread {
        let result = session.copy(from: first, to: second)
        forward.withLock { $0 = result }
        forwardDone.signal()
    }
    let backward = session.copy(from: second, to: first)
    // After an abort a direction blocked on standard input cannot be woken:
    // wait for it only briefly.
    if session.isAborted {
        _ = forwardDone.wait(timeout: .now() + 2)
    } else {
        forwardDone.wait()
    }
    first.close()
    second.close()
    let (sent, forwardOK) = forward.withLock { $0 }
    if session.closedIdle, let idle = log.idleTimeout { log.idle(id, seconds: idle) }
    log.closed(id, forward: sent, backward: backward.bytes)
    return (forwardOK && backward.ok) || session.closedIdle
}

/// The two sides of one relayed connection, and whether an error ended it.
final class RelaySession: Sendable {
    private let first: any ByteStream
    private let second: any ByteStream
    private let splicing: Bool
    private let aborted = Atomic<Bool>(false)
    private let idleAbort = Atomic<Bool>(false)
    /// When a byte last moved either way, in nanoseconds of ContinuousClock since the start.
    private let start = ContinuousClock.now
    private let lastActivity = Atomic<Int64>(0)

    init(_ first: any ByteStream, _ second: any ByteStream, splicing: Bool = false) {
        self.first = first
        self.second = second
        self.splicing = splicing
    }

    var isAborted: Bool { aborted.load(ordering: .acquiring) }

    /// Whether --idle-timeout ended the connection.
    var closedIdle: Bool { idleAbort.load(ordering: .acquiring) }

    private var elapsed: Int64 {
        let since = start.duration(to: .now).components
        return since.seconds * 1_000_000_000 + since.attoseconds / 1_000_000_000
    }

    private func touch() { lastActivity.store(elapsed, ordering: .relaxed) }

    /// Aborts the session once `idle` seconds pass with no byte moved either
    /// way; returns when `ended` is signalled.
    func watch(idle: Double, until ended: DispatchSemaphore) {
        let limit = Int64(idle * 1e9)
        while true {
            let wait = lastActivity.load(ordering: .relaxed) + limit - elapsed
            if wait <= 0 {
                if !isAborted {
                    idleAbort.store(true, ordering: .releasing)
                    abort()
                }
                return
            }
            if ended.wait(timeout: .now() + .nanoseconds(Int(wait))) == .success { return }
        }
    }

    /// Closes both sides, waking the other direction; once.
    private func abort() {
        guard !aborted.exchange(true, ordering: .acquiringAndReleasing) else { return }
        first.close()
        second.close()
    }

    /// Copies until the end of `source`'s stream, then half-closes
    /// `destination`. An error is reported and aborts both directions, unless
    /// it only echoes an abort the other direction already reported.
    func copy(from source: any ByteStream, to destination: any ByteStream) -> (bytes: Int, ok: Bool) {
        var total = 0
        if splicing, let from = source as? ConnectionStream, let to = destination as? ConnectionStream {
            do {
                let spliced = try Splice.copy(from: from.connection, named: from.name, to: to.connection, named: to.name) { count in
                    total += count
                    touch()
                }
                if spliced != nil {
                    destination.closeWrite()
                    return (total, true)
                }
            } catch {
                if !isAborted {
                    report(error)
                    abort()
                }
                return (total, false)
            }
        }
        // A message side reads whole messages, up to the largest uds takes.
        let size = relaysMessages(source) ? maximumMessageSize : copyBufferSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 1)
        defer { buffer.deallocate() }
        do {
            while true {
                let count = try source.read(into: buffer)
                if count == 0 {
                    destination.closeWrite()
                    return (total, true)
                }
                touch()
                try destination.writeAll(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
                total += count
            }
        } catch {
            if !isAborted {
                report(error)
                abort()
            }
            return (total, false)
        }
    }
}

/// The --verbose lines on standard error, and the --dump.
/// Also what every relayed connection is given: --idle-timeout, and
/// whether to splice.
final class RelayLog: Sendable {
    let verbose: Bool
    let dump: Dump?
    let idleTimeout: Double?
    let splicing: Bool
    /// The sides' names by connection, for dump labels.
    private let names = Mutex<[Int: (String, String)]>([:])

    init(verbose: Bool, dump: Dump? = nil, idleTimeout: Double? = nil, splicing: Bool = false) {
        self.verbose = verbose
        self.dump = dump
        self.idleTimeout = idleTimeout
        self.splicing = splicing
    }

    func idle(_ id: Int, seconds: Double) {
        if verbose { Console.standardError.line("uds: connection \(id): no byte either way for \(seconds) s; closed") }
    }

    func opened(_ id: Int, from: String, to: String) {
        if dump != nil { names.withLock { $0[id] = (from, to) } }
        if verbose { Console.standardError.line("uds: connection \(id): \(from) <-> \(to)") }
    }

    /// The two sides of connection `id`, dumped when dumping.
    func tapped(_ first: any ByteStream, _ second: any ByteStream, id: Int) -> (any ByteStream, any ByteStream) {
        guard let dump else { return (first, second) }
        let (from, to) = names.withLock { $0.removeValue(forKey: id) } ?? ("FROM", "TO")
        let tap = dump.tap(from, to, connection: id)
        return (DumpedStream(inner: first, tap: tap, direction: .forward),
                DumpedStream(inner: second, tap: tap, direction: .backward))
    }

    func closed(_ id: Int, forward: Int, backward: Int) {
        if verbose {
            Console.standardError.line("uds: connection \(id) closed: \(forward) bytes forward, \(backward) bytes back")
        }
    }
}

/// Whether `stream` carries messages, which must be read whole.
private func relaysMessages(_ stream: any ByteStream) -> Bool {
    if let dumped = stream as? DumpedStream { return relaysMessages(dumped.inner) }
    return stream is SeqpacketStream
}
