#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

// The operations every socket type shares, written once; the public types
// forward to them in one line each.

extension SocketHandle {
    static func open(
        _ kind: SocketKind, operation: String, label: String?, nonBlocking: Bool = false
    ) throws(SocketError) -> SocketHandle {
        if kind == .seqpacket && !Platform.supportsSeqpacket {
            throw SocketError(operation, address: label, code: .unsupported("seqpacket sockets are"))
        }
        switch Sys.socket(kind: kind, nonBlocking: nonBlocking) {
        case .success(let fd): return SocketHandle(descriptor: fd, kind: kind, label: label)
        case .failure(let errno): throw SocketError("socket", address: label, errno: errno)
        }
    }

    static func openPair(_ kind: SocketKind) throws(SocketError) -> (SocketHandle, SocketHandle) {
        if kind == .seqpacket && !Platform.supportsSeqpacket {
            throw SocketError("socketpair", code: .unsupported("seqpacket sockets are"))
        }
        switch Sys.socketPair(kind: kind) {
        case .success(let (first, second)):
            return (
                SocketHandle(descriptor: first, kind: kind, label: "socketpair"),
                SocketHandle(descriptor: second, kind: kind, label: "socketpair"))
        case .failure(let errno):
            throw SocketError("socketpair", errno: errno)
        }
    }

    /// Connects to a Unix address. A signal that interrupts a blocking Unix
    /// `connect` (waiting for room in a full backlog) leaves the socket
    /// unconnected: the kernel does not go on connecting, as it does for TCP,
    /// so the call is made again, within what is left of `timeout`.
    func connect(to address: UnixAddress, timeout: Duration? = nil) throws(SocketError) {
        currentLabel = address.description
        let deadline = timeout.map { Deadline.now.advanced(by: $0) }
        while true {
            let remaining = deadline.map { Deadline.now.duration(to: $0) }
            if let remaining, remaining <= .zero { throw error("connect", code: .timedOut) }
            let interrupted = try connect(timeout: remaining, interruption: .retry) { fd in
                address.withSockaddr { Sys.connect(fd, $0, $1) }
            }
            if !interrupted { return }
        }
    }

    /// What a signal during a blocking `connect` means.
    enum ConnectInterruption {
        /// Unix: nothing was connected; the caller asks again.
        case retry
        /// TCP: the kernel goes on connecting; wait for the outcome.
        case awaitCompletion
    }

    /// Runs `start` (one `connect` call) and sees it through; returns `true`
    /// if a signal interrupted it and `interruption` is `.retry`. With a
    /// `timeout` the wait is bounded (`SO_SNDTIMEO`, which Linux's `connect`
    /// honours) and fails with `.timedOut`.
    func connect(
        timeout: Duration?, interruption: ConnectInterruption, _ start: (CInt) -> Result<Void, Errno>
    ) throws(SocketError) -> Bool {
        try withDescriptor("connect") { (fd) throws(SocketError) in
            if let timeout {
                if case .failure(let errno) = Sys.setTimeout(fd, receive: false, timeout) { throw error("setsockopt", errno) }
            }
            defer { if timeout != nil { _ = Sys.setTimeout(fd, receive: false, nil) } }
            switch start(fd) {
            case .success: return false
            case .failure(.interrupted) where interruption == .retry:
                return true
            case .failure(.interrupted):
                let milliseconds = timeout.map { CInt(clamping: $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) } ?? -1
                while true {
                    switch Sys.poll(fd, forWriting: true, timeoutMilliseconds: milliseconds) {
                    case .success(true): break
                    case .success(false) where timeout != nil: throw error("connect", code: .timedOut)
                    case .success(false): continue
                    case .failure(let errno): throw error("connect", errno)
                    }
                    break
                }
                switch Sys.socketError(fd) {
                case .success(0): return false
                case .success(let code): throw error("connect", Errno(rawValue: code))
                case .failure(let errno): throw error("connect", errno)
                }
            case .failure(.nowInProgress) where timeout != nil:
                throw error("connect", code: .timedOut)
            case .failure(let errno):
                throw error("connect", errno)
            }
        }
    }

    // MARK: Names

    /// What only a Unix socket has (credentials, descriptors, socket files):
    /// on TCP it is `.unsupported`, decided here for every type.
    func requireUnix(_ operation: String, _ what: String) throws(SocketError) {
        if kind == .tcp { throw error(operation, code: .unsupported("\(what) on TCP is")) }
    }

    func localAddress() throws(SocketError) -> UnixAddress {
        try requireUnix("getsockname", "a Unix address")
        return try withDescriptor("getsockname") { (fd) throws(SocketError) in
            try UnixAddress.fromKernel { (address, length) throws(SocketError) in
                if case .failure(let errno) = Sys.localAddress(fd, address, length) { throw error("getsockname", errno) }
            }
        }
    }

    func peerAddress() throws(SocketError) -> UnixAddress {
        try requireUnix("getpeername", "a Unix address")
        return try withDescriptor("getpeername") { (fd) throws(SocketError) in
            try UnixAddress.fromKernel { (address, length) throws(SocketError) in
                if case .failure(let errno) = Sys.peerAddress(fd, address, length) { throw error("getpeername", errno) }
            }
        }
    }

    /// This side's endpoint: a Unix address, or a TCP address and port.
    func localEndpoint() throws(SocketError) -> Endpoint {
        guard kind == .tcp else { return .unix(try localAddress()) }
        let (host, port) = try inetLocalAddress().hostAndPort
        return .tcp(host: host, port: port)
    }

    /// The peer's endpoint.
    func peerEndpoint() throws(SocketError) -> Endpoint {
        guard kind == .tcp else { return .unix(try peerAddress()) }
        let (host, port) = try inetPeerAddress().hostAndPort
        return .tcp(host: host, port: port)
    }

    func shutdown(_ direction: ShutdownDirection) throws(SocketError) {
        let how: CInt =
            switch direction {
            case .read: Sys.shutdownRead
            case .write: Sys.shutdownWrite
            case .both: Sys.shutdownBoth
            }
        try call("shutdown") { Sys.shutdown($0, how: how) }
    }

    // MARK: One attempt each, shared by the blocking and the async types

    // `flags` is `MSG_DONTWAIT` when a blocking socket waits with a deadline
    // (see `blocking`); async sockets' descriptors are non-blocking already.

    /// Reads stream data. While the socket keeps descriptors, this is a
    /// `recvmsg` that holds on to any descriptors riding on the data.
    @inline(__always)
    func readAttempt(_ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer, flags: CInt = 0) throws(SocketError) -> Result<Int, Errno> {
        let result: Result<Int, Errno>
        if keepsDescriptors.load(ordering: .relaxed) {
            result = try messageAttempt(fd, buffer, wantSender: false, flags: flags).map(\.count)
        } else {
            result = Sys.receive(fd, buffer, flags: flags)
        }
        // close() on another thread shuts the socket down to wake readers,
        // which then read 0: that is not the peer's end of the stream.
        if case .success(0) = result, isClosed { throw error("read", code: .closed) }
        return result
    }

    @inline(__always)
    func writeAttempt(_ fd: CInt, _ buffer: UnsafeRawBufferPointer, flags: CInt = 0) -> Result<Int, Errno> {
        Sys.send(fd, buffer, flags: flags)
    }

    func sendAttempt(_ fd: CInt, _ buffer: UnsafeRawBufferPointer, to address: UnixAddress?, flags: CInt = 0) -> Result<Int, Errno> {
        guard let address else { return Sys.send(fd, buffer, flags: flags) }
        return address.withSockaddr { Sys.send(fd, buffer, to: $0, $1, flags: flags) }
    }

    /// Receives one message; descriptors that come with it are kept for
    /// `receiveWithDescriptors` when the socket keeps them.
    func messageAttempt(
        _ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer, wantSender: Bool, flags: CInt = 0
    ) throws(SocketError) -> Result<ReceivedMessage, Errno> {
        let capacity = keepsDescriptors.load(ordering: .relaxed) ? ControlMessages.maximumDescriptors : 0
        switch try receiveAttempt(fd, into: buffer, wantSender: wantSender, descriptorCapacity: capacity, flags: flags) {
        case .success(let (message, descriptors)):
            if !descriptors.isEmpty { keep(descriptors) }
            return .success(message)
        case .failure(let errno):
            return .failure(errno)
        }
    }

    /// Sends `buffer` with `descriptors` attached (to `address` if given);
    /// `validate` them first.
    func sendWithDescriptorsAttempt(
        _ fd: CInt, _ buffer: UnsafeRawBufferPointer, _ descriptors: [CInt], to address: UnixAddress?, flags: CInt = 0
    ) -> Result<Int, Errno> {
        ControlMessages.send(fd, buffer, descriptors: descriptors, to: address, flags: flags)
    }

    /// One `recvmsg` on `fd`: the kernel's refusal as a value (the callers
    /// wait on would-block), everything else decided here. Every descriptor
    /// is owned at once, so an error thrown here closes them.
    func receiveAttempt(
        _ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool, descriptorCapacity: Int, flags: CInt = 0
    ) throws(SocketError) -> Result<(ReceivedMessage, [ReceivedDescriptor]), Errno> {
        let credentials = receivesCredentials.load(ordering: .relaxed)
        let received: ControlMessages.Received
        switch ControlMessages.receive(
            fd, into: buffer, descriptorCapacity: descriptorCapacity, credentials: credentials,
            wantSender: wantSender, messages: kind != .stream && kind != .tcp, flags: flags)
        {
        case .success(let value): received = value
        case .failure(let errno): return .failure(errno)
        }
        let descriptors = received.descriptors.map(ReceivedDescriptor.init)
        // Woken by close() on another thread (see `readAttempt`): not an empty message.
        if received.count == 0 && isClosed {
            descriptors.forEach { $0.close() }
            throw error(receiveOperation, code: .closed)
        }
        if received.flags & Sys.controlTruncatedFlag != 0 && (descriptorCapacity > 0 || !descriptors.isEmpty) {
            descriptors.forEach { $0.close() }
            throw error(receiveOperation, code: .descriptorsTruncated)
        }
        let truncated = received.flags & Sys.truncatedFlag != 0
        let message = ReceivedMessage(
            count: min(received.count, buffer.count),
            isTruncated: truncated,
            fullLength: truncated && Sys.reportFullLengthFlag != 0 && kind != .stream ? received.count : nil,
            sender: received.sender,
            credentials: received.credentials)
        return .success((message, descriptors))
    }

    /// What receive errors name: a stream is read, whatever call does it.
    var receiveOperation: String { kind == .stream || kind == .tcp ? "read" : "recvmsg" }

    func keep(_ descriptors: [ReceivedDescriptor]) {
        kept.withLock { kept in
            let room = max(0, KeptDescriptors.limit - kept.descriptors.count)
            kept.descriptors += descriptors.prefix(room)
            for extra in descriptors.dropFirst(room) {
                extra.close()
                kept.discarded += 1
            }
        }
    }

    /// The kept descriptors; throws once if some had to be closed for lack of room.
    func takeKept() throws(SocketError) -> [ReceivedDescriptor] {
        let (descriptors, discarded) = kept.withLock { kept in
            defer { kept = KeptDescriptors() }
            return (kept.descriptors, kept.discarded)
        }
        if discarded > 0 {
            descriptors.forEach { $0.close() }
            throw error(receiveOperation, code: .descriptorsDiscarded(count: discarded))
        }
        return descriptors
    }

    /// Puts back what `takeKept` took: a failed receive (a timeout, say) must
    /// not lose what plain reads kept.
    func restoreKept(_ earlier: [ReceivedDescriptor]) {
        if !earlier.isEmpty { kept.withLock { $0.descriptors = earlier + $0.descriptors } }
    }

    /// Checks, before any system call, that `descriptors` can travel with `buffer`.
    func validate(_ descriptors: [FileDescriptor], with buffer: UnsafeRawBufferPointer, needsData: Bool) throws(SocketError) -> [CInt] {
        try requireUnix("sendmsg", "passing descriptors")
        if descriptors.count > ControlMessages.maximumDescriptors {
            throw error("sendmsg", code: .tooManyDescriptors(count: descriptors.count, limit: ControlMessages.maximumDescriptors))
        }
        if needsData && buffer.isEmpty && !descriptors.isEmpty {
            throw error("sendmsg", code: .invalidArgument("descriptors need at least one byte of data to travel with"))
        }
        return descriptors.map(\.rawValue)
    }

    // MARK: Blocking

    /// Runs `attempt` on a blocking socket. Without a deadline the call blocks
    /// in the kernel, as in C. With one, `poll` waits for readiness until the
    /// deadline and the call is made with `MSG_DONTWAIT`, so another thread
    /// that took the data first cannot make it wait past the deadline (the
    /// descriptor's own flags, which another process may share, are left
    /// alone). A descriptor that is non-blocking anyway waits in `poll` too.
    func blocking<R>(
        _ direction: Registration.Direction, _ operation: String, deadline: Deadline?,
        naming destination: String? = nil, _ attempt: (CInt, CInt) throws(SocketError) -> Result<R, Errno>
    ) throws(SocketError) -> R {
        try withDescriptor(operation) { (fd) throws(SocketError) in
            let flags = deadline == nil ? 0 : Sys.dontWaitFlag
            while true {
                if deadline != nil { try awaitReady(fd, direction, operation, deadline: deadline) }
                switch try attempt(fd, flags) {
                case .success(let value): return value
                case .failure(.wouldBlock):
                    // Woken by close() on another thread, which shut the socket down.
                    if isClosed { throw error(operation, code: .closed) }
                    // Without a deadline a blocking descriptor says EAGAIN only
                    // when its own SO_RCVTIMEO/SO_SNDTIMEO ran out.
                    guard deadline == nil, Sys.isNonBlocking(fd) else {
                        if deadline == nil { throw error(operation, code: .timedOut) }
                        continue
                    }
                    try awaitReady(fd, direction, operation, deadline: nil)
                case .failure(let errno): throw error(operation, errno, naming: destination)
                }
            }
        }
    }

    /// Waits in `poll` until `fd` is ready in `direction` (or hung up: a
    /// close on another thread shuts the socket down), or fails with
    /// `.timedOut` at `deadline`.
    func awaitReady(
        _ fd: CInt, _ direction: Registration.Direction, _ operation: String, deadline: Deadline?
    ) throws(SocketError) {
        while true {
            var milliseconds: CInt = -1
            if let deadline {
                let remaining = Deadline.now.duration(to: deadline)
                if remaining <= .zero { throw error(operation, code: .timedOut) }
                milliseconds = CInt(clamping: remaining.roundedUpMilliseconds)
            }
            switch Sys.poll(fd, forWriting: direction == .write, timeoutMilliseconds: milliseconds) {
            case .success(true): return
            case .success(false): continue
            case .failure(let errno): throw error("poll", errno)
            }
        }
    }

    /// Receives with room for the kernel's limit of descriptors, after those
    /// that plain reads kept; on failure the kept ones are put back.
    func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool, deadline: Deadline?
    ) throws(SocketError) -> (ReceivedMessage, [ReceivedDescriptor]) {
        try requireUnix(receiveOperation, "passing descriptors")
        let earlier = try takeKept()
        do throws(SocketError) {
            let (message, descriptors) = try blocking(.read, receiveOperation, deadline: deadline) {
                (fd, flags) throws(SocketError) in
                try receiveAttempt(
                    fd, into: buffer, wantSender: wantSender, descriptorCapacity: ControlMessages.maximumDescriptors,
                    flags: flags)
            }
            return (message, earlier + descriptors)
        } catch {
            restoreKept(earlier)
            throw error
        }
    }

    // MARK: Credentials

    /// The peer's credentials. The corresponding C call is `getsockopt(SO_PEERCRED)`
    /// on Linux, `getpeereid` and `LOCAL_PEERPID` on Darwin.
    func peerCredentials() throws(SocketError) -> PeerCredentials {
        try requireUnix("getpeercred", "peer credentials")
        var credentials = try call("getpeercred") { Sys.peerCredentials($0) }
        // Where the kernel has them; their absence is not an error.
        credentials.supplementaryGroups = try? call("getsockopt(SO_PEERGROUPS)") { Sys.peerGroups($0) }
        credentials.securityLabel = (try? call("getsockopt(SO_PEERSEC)") { Sys.peerSecurityLabel($0) }) ?? nil
        return credentials
    }

    /// The peer process, by pidfd (Linux 6.5+).
    func peerProcess() throws(SocketError) -> PeerProcess {
        try requireUnix("getsockopt(SO_PEERPIDFD)", "a peer process")
        #if os(Linux)
        let pidfd = try call("getsockopt(SO_PEERPIDFD)") { Sys.peerProcessDescriptor($0) }
        guard let pid = Sys.processID(ofPidfd: pidfd) else {
            _ = Sys.close(pidfd)
            throw error("getsockopt(SO_PEERPIDFD)", code: .unsupported("reading a pidfd's process is"))
        }
        return PeerProcess(descriptor: FileDescriptor(rawValue: pidfd), processID: pid)
        #else
        throw error("getsockopt(SO_PEERPIDFD)", code: .unsupported("pidfds are"))
        #endif
    }

    func setReceivesCredentials(_ on: Bool) throws(SocketError) {
        try requireUnix("setsockopt(SO_PASSCRED)", "receiving credentials")
        try call("setsockopt(SO_PASSCRED)") { Sys.setPassCredentials($0, on) }
        receivesCredentials.store(on, ordering: .relaxed)
    }
}

/// Which direction of a connection to shut down.
public enum ShutdownDirection: Sendable {
    /// No more reads; pending and later data from the peer is discarded.
    case read
    /// No more writes; the peer reads end-of-stream after the data already sent.
    case write
    /// Both directions.
    case both
}

/// What one `receive` call got: a message's length, whether it was cut to fit
/// the buffer, and for datagrams who sent it.
public struct ReceivedMessage: Hashable, Sendable {
    /// Bytes written into the buffer.
    public var count: Int
    /// The message was longer than the buffer; the rest is lost. Never ignore
    /// this: a cut message is not the message that was sent.
    public var isTruncated: Bool
    /// The message's full length when it was truncated (Linux only).
    public var fullLength: Int?
    /// The sender's address (datagrams); `nil` on connection-oriented sockets.
    public var sender: UnixAddress?
    /// The sender's credentials, checked by the kernel, when the socket asked
    /// for them (Linux `SO_PASSCRED`).
    public var credentials: PeerCredentials?
}

extension SocketHandle {
    /// Binds and listens; returns whether a stale socket file was replaced.
    func bindAndListen(to address: UnixAddress, options: BindOptions) throws(SocketError) -> Bool {
        let replaced = try self.bind(to: address, options: options)
        try listen(options: options)
        return replaced
    }

    /// Listens, and readies what accept needs to get through a full
    /// descriptor table: the reserve descriptor and whom to tell.
    func listen(options: BindOptions) throws(SocketError) {
        let backlog = options.backlog.map { CInt(clamping: $0) } ?? Platform.defaultBacklog
        try call("listen") { Sys.listen($0, backlog: backlog) }
        acceptRecoveryHandler.withLock { $0 = options.onAcceptRecovery }
        logger.withLock { $0 = options.logger }
        ReserveDescriptor.shared.ensureHeld()
    }

    func reportAcceptRecovery(_ event: AcceptRecoveryEvent) {
        acceptRecoveryHandler.withLock { $0 }?(event)
        log(event)
    }

    /// Accepts the next connection the policy admits; refused peers are told
    /// to the policy's handler and closed at once. Failures the kernel
    /// recovers from (see ``AcceptRecovery``) do not end it. A blocking
    /// listener's descriptor stays blocking (it may be shared with another
    /// process, which expects it so): with a deadline, `poll` waits for a
    /// connection, and if another thread takes that one first, the accept
    /// waits for the next.
    func accept(admitting policy: AccessPolicy, deadline: Deadline?) throws(SocketError) -> (SocketHandle, Endpoint) {
        while true {
            let (connection, peer) = try acceptRecovering(deadline: deadline) { () throws(SocketError) in
                try blocking(.read, "accept", deadline: deadline) { (fd, _) throws(SocketError) in
                    try acceptAttempt(fd, nonBlocking: false)
                }
            }
            if admit(connection, by: policy) { return (connection, peer) }
        }
    }

    /// One `accept`: a new handle, close-on-exec (and for TCP with
    /// `TCP_NODELAY` on), and the peer's endpoint.
    func acceptAttempt(_ fd: CInt, nonBlocking: Bool) throws(SocketError) -> Result<(SocketHandle, Endpoint), Errno> {
        var accepted: CInt = -1
        var failure: Errno?
        func acceptInto(_ address: UnsafeMutablePointer<sockaddr>, _ length: UnsafeMutablePointer<socklen_t>) {
            switch Sys.accept(fd, address, length, nonBlocking: nonBlocking) {
            case .success(let newFD): accepted = newFD
            case .failure(let errno): failure = errno
            }
        }
        let peer: Endpoint
        if kind == .tcp {
            let address = InetAddress.fromKernel(acceptInto)
            if let failure { return .failure(failure) }
            let (host, port) = address.hostAndPort
            peer = .tcp(host: host, port: port)
        } else {
            let address = UnixAddress.fromKernel(acceptInto)
            if let failure { return .failure(failure) }
            peer = .unix(address)
        }
        let connection = SocketHandle(descriptor: accepted, kind: kind, label: currentLabel)
        if kind == .tcp {
            do throws(SocketError) {
                try connection.setNoDelay(true)
            } catch {
                try? connection.close()
                throw error
            }
        }
        return .success((connection, peer))
    }
}

/// Runs `body` over the bytes of `bytes`, contiguous; `Array.withUnsafeBytes`
/// is not typed-throws.
@inline(__always)
func withContiguousBytes<R>(
    _ bytes: some Sequence<UInt8>, _ body: (UnsafeRawBufferPointer) throws(SocketError) -> R
) throws(SocketError) -> R {
    let result = Array(bytes).withUnsafeBytes { buffer in
        Result { () throws(SocketError) -> R in try body(buffer) }
    }
    return try result.get()
}

extension Duration {
    /// Whole milliseconds, rounded up: a wait of 0.3 ms must not become 0,
    /// which `poll` takes as "do not wait".
    var roundedUpMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        let perMillisecond: Int64 = 1_000_000_000_000_000
        let (milliseconds, rest) = attoseconds.quotientAndRemainder(dividingBy: perMillisecond)
        return seconds.multipliedReportingOverflow(by: 1000).partialValue + milliseconds + (rest > 0 ? 1 : 0)
    }
}
