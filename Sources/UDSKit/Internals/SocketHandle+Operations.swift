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
        let deadline = timeout.map { ContinuousClock.now.advanced(by: $0) }
        while true {
            let remaining = deadline.map { ContinuousClock.now.duration(to: $0) }
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

    func localAddress() throws(SocketError) -> UnixAddress {
        try withDescriptor("getsockname") { (fd) throws(SocketError) in
            try UnixAddress.fromKernel { (address, length) throws(SocketError) in
                if case .failure(let errno) = Sys.localAddress(fd, address, length) { throw error("getsockname", errno) }
            }
        }
    }

    func peerAddress() throws(SocketError) -> UnixAddress {
        try withDescriptor("getpeername") { (fd) throws(SocketError) in
            try UnixAddress.fromKernel { (address, length) throws(SocketError) in
                if case .failure(let errno) = Sys.peerAddress(fd, address, length) { throw error("getpeername", errno) }
            }
        }
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

    func setTimeout(receive: Bool, _ duration: Duration?) throws(SocketError) {
        try call("setsockopt") { Sys.setTimeout($0, receive: receive, duration) }
    }

    /// Reads stream data. While the socket keeps descriptors, this is a
    /// `recvmsg` that holds on to any descriptors riding on the data.
    @inline(__always)
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int {
        if keepsDescriptors.load(ordering: .relaxed) {
            return try receiveMessage(into: buffer, wantSender: false).count
        }
        let count = try call("read") { Sys.receive($0, buffer) }
        // close() on another thread shuts the socket down to wake this call,
        // which then returns 0: that is not the peer's end of the stream.
        if count == 0 && isClosed { throw error("read", code: .closed) }
        return count
    }

    @inline(__always)
    func write(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        try call("write") { Sys.send($0, buffer) }
    }

    /// Sends every byte, continuing after partial writes.
    func writeAll(_ buffer: UnsafeRawBufferPointer) throws(SocketError) {
        var remaining = buffer
        while !remaining.isEmpty {
            let written = try write(remaining)
            remaining = UnsafeRawBufferPointer(rebasing: remaining[written...])
        }
    }

    /// Reads what has arrived, up to `maximumCount` bytes, as an array.
    func read(upTo maximumCount: Int) throws(SocketError) -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: maximumCount) { (buffer, initialized) throws(SocketError) in
            initialized = try read(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// Reads exactly `count` bytes as an array, or fails with `.unexpectedEndOfStream`.
    func readExactly(_ count: Int) throws(SocketError) -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: count) { (buffer, initialized) throws(SocketError) in
            try readExactly(into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }

    /// Receives one message of at most `maximumSize` bytes as an array, with its receipt.
    func receiveMessage(maximumSize: Int, wantSender: Bool) throws(SocketError) -> (bytes: [UInt8], receipt: ReceivedMessage) {
        var receipt = ReceivedMessage(count: 0, isTruncated: false)
        let bytes = try [UInt8](unsafeUninitializedCapacity: maximumSize) { (buffer, initialized) throws(SocketError) in
            receipt = try receiveMessage(into: UnsafeMutableRawBufferPointer(buffer), wantSender: wantSender)
            initialized = receipt.count
        }
        return (bytes, receipt)
    }

    /// Fills `buffer` completely, or fails with `.unexpectedEndOfStream`.
    func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) {
        var filled = 0
        while filled < buffer.count {
            let count = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
            if count == 0 {
                throw error("read", code: .unexpectedEndOfStream(received: filled, expected: buffer.count))
            }
            filled += count
        }
    }

    /// Receives one message and, if asked, its sender; reports truncation.
    /// Descriptors that come with it are kept for `receiveWithDescriptors`.
    /// What receive errors name: a stream is read, whatever call does it.
    var receiveOperation: String { kind == .stream ? "read" : "recvmsg" }

    func receiveMessage(
        into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool
    ) throws(SocketError) -> ReceivedMessage {
        let capacity = keepsDescriptors.load(ordering: .relaxed) ? ControlMessages.maximumDescriptors : 0
        let (message, descriptors) = try receive(into: buffer, wantSender: wantSender, descriptorCapacity: capacity)
        if !descriptors.isEmpty { keep(descriptors) }
        return message
    }

    /// Receives one message with the descriptors that came with it, after any
    /// that earlier plain reads kept.
    func receiveWithDescriptors(
        into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool
    ) throws(SocketError) -> (ReceivedMessage, [ReceivedDescriptor]) {
        let earlier = try takeKept()
        do {
            let (message, descriptors) = try receive(
                into: buffer, wantSender: wantSender, descriptorCapacity: ControlMessages.maximumDescriptors)
            return (message, earlier + descriptors)
        } catch {
            restoreKept(earlier)
            throw error
        }
    }

    /// Puts back what `takeKept` took: a failed receive (a timeout, say) must
    /// not lose what plain reads kept.
    func restoreKept(_ earlier: [ReceivedDescriptor]) {
        if !earlier.isEmpty { kept.withLock { $0.descriptors = earlier + $0.descriptors } }
    }

    /// One `recvmsg`, with room for `descriptorCapacity` descriptors and, if
    /// enabled, credentials. Every descriptor is owned at once, so an error
    /// thrown here closes them.
    private func receive(
        into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool, descriptorCapacity: Int
    ) throws(SocketError) -> (ReceivedMessage, [ReceivedDescriptor]) {
        try withDescriptor(receiveOperation) { (fd) throws(SocketError) in
            switch try receiveAttempt(fd, into: buffer, wantSender: wantSender, descriptorCapacity: descriptorCapacity) {
            case .success(let received): return received
            case .failure(let errno): throw error(receiveOperation, errno)
            }
        }
    }

    /// One `recvmsg` on `fd`: the kernel's refusal as a value (the async layer
    /// waits on would-block), everything else decided here.
    func receiveAttempt(
        _ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, wantSender: Bool, descriptorCapacity: Int
    ) throws(SocketError) -> Result<(ReceivedMessage, [ReceivedDescriptor]), Errno> {
        let credentials = receivesCredentials.load(ordering: .relaxed)
        let received: ControlMessages.Received
        switch ControlMessages.receive(
            fd, into: buffer, descriptorCapacity: descriptorCapacity, credentials: credentials,
            wantSender: wantSender, messages: kind != .stream)
        {
        case .success(let value): received = value
        case .failure(let errno): return .failure(errno)
        }
        let descriptors = received.descriptors.map(ReceivedDescriptor.init)
        // Woken by close() on another thread (see `read`): not an empty message.
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

    /// Sends `buffer` with `descriptors` attached, to `address` if given.
    func send(
        _ buffer: UnsafeRawBufferPointer, descriptors: [CInt], to address: UnixAddress?, needsData: Bool
    ) throws(SocketError) -> Int {
        try validate(descriptors, with: buffer, needsData: needsData)
        return try call("sendmsg") { ControlMessages.send($0, buffer, descriptors: descriptors, to: address) }
    }

    /// Checks, before any system call, that `descriptors` can travel with `buffer`.
    func validate(_ descriptors: [CInt], with buffer: UnsafeRawBufferPointer, needsData: Bool) throws(SocketError) {
        if descriptors.count > ControlMessages.maximumDescriptors {
            throw error("sendmsg", code: .tooManyDescriptors(count: descriptors.count, limit: ControlMessages.maximumDescriptors))
        }
        if needsData && buffer.isEmpty && !descriptors.isEmpty {
            throw error("sendmsg", code: .invalidArgument("descriptors need at least one byte of data to travel with"))
        }
    }

    /// The peer's credentials. The corresponding C call is `getsockopt(SO_PEERCRED)`
    /// on Linux, `getpeereid` and `LOCAL_PEERPID` on Darwin.
    func peerCredentials() throws(SocketError) -> PeerCredentials {
        var credentials = try call("getpeercred") { Sys.peerCredentials($0) }
        // Where the kernel has them; their absence is not an error.
        credentials.supplementaryGroups = try? call("getsockopt(SO_PEERGROUPS)") { Sys.peerGroups($0) }
        credentials.securityLabel = (try? call("getsockopt(SO_PEERSEC)") { Sys.peerSecurityLabel($0) }) ?? nil
        return credentials
    }

    /// The peer process, by pidfd (Linux 6.5+).
    func peerProcess() throws(SocketError) -> PeerProcess {
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
        try call("setsockopt(SO_PASSCRED)") { Sys.setPassCredentials($0, on) }
        receivesCredentials.store(on, ordering: .relaxed)
    }

    func send(_ buffer: UnsafeRawBufferPointer, to address: UnixAddress) throws(SocketError) -> Int {
        try withDescriptor("sendto") { (fd) throws(SocketError) in
            let result = address.withSockaddr { Sys.send(fd, buffer, to: $0, $1) }
            switch result {
            case .success(let count): return count
            case .failure(let errno): throw SocketError("sendto", address: address.description, errno: errno)
            }
        }
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
    /// recovers from (see ``AcceptRecovery``) do not end it.
    func accept(admitting policy: AccessPolicy) throws(SocketError) -> (SocketHandle, UnixAddress) {
        while true {
            let (connection, peer) = try acceptRecovering { () throws(SocketError) in try accept() }
            if admit(connection, by: policy) { return (connection, peer) }
        }
    }

    /// Accepts one connection: a new handle, close-on-exec, and the peer's address.
    func accept() throws(SocketError) -> (SocketHandle, UnixAddress) {
        var accepted: CInt = -1
        let peer = try withDescriptor("accept") { (fd) throws(SocketError) in
            try UnixAddress.fromKernel { (address, length) throws(SocketError) in
                switch Sys.accept(fd, address, length) {
                case .success(let newFD): accepted = newFD
                case .failure(let errno): throw error("accept", errno)
                }
            }
        }
        return (SocketHandle(descriptor: accepted, kind: kind, label: currentLabel), peer)
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
