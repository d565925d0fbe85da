#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CUDSKit
import SystemPackage

/// What the kernel said about one registered descriptor.
struct ReadinessEvent {
    var token: UInt64
    var readable: Bool
    var writable: Bool
    /// The peer will send nothing more, or an error is pending: a state that
    /// persists, so no further read edge will announce it. (Not EPOLLHUP alone:
    /// Linux reports it for a stream socket that is not connected yet.)
    var readClosed: Bool
}

/// The contract each readiness backend fulfils: edge-triggered interest in
/// reading and writing, registered once per descriptor, and a way to wake the
/// waiting thread. `epoll` on Linux, `kqueue` on Darwin; nothing else in the
/// async layer knows which.
protocol SelectorBackend: Sendable {
    init() throws(Errno)
    /// Watches `fd` for reading and writing, edge-triggered, reporting `token`.
    func register(_ fd: CInt, token: UInt64) throws(Errno)
    func deregister(_ fd: CInt)
    /// Waits up to `timeoutMilliseconds` (-1: forever) and calls `body` per event.
    func wait(timeoutMilliseconds: CInt, _ body: (ReadinessEvent) -> Void)
    /// Makes a `wait` on another thread return. Safe from any thread, also
    /// during and after `close` (it then does nothing).
    func wakeup()
    /// Called by the waiting thread after its last `wait`.
    func close()
}

#if os(Linux)
typealias PlatformSelector = EpollSelector

/// Linux: one epoll instance, plus an eventfd for wakeups.
final class EpollSelector: SelectorBackend {
    private let epoll: CInt
    private let eventFD: CInt
    /// Wakeups and registrations come from any thread, also while the loop
    /// shuts down: none may touch a number after it was closed (and reused).
    private let gate = UseGate()
    private static let wakeupToken = UInt64.max
    private static let batch = 256

    init() throws(Errno) {
        epoll = try Sys.valueOrErrno { epoll_create1(CInt(EPOLL_CLOEXEC)) }.get()
        switch Sys.valueOrErrno({ eventfd(0, CInt(EFD_CLOEXEC | EFD_NONBLOCK)) }) {
        case .success(let fd): eventFD = fd
        case .failure(let errno):
            _ = Sys.close(epoll)
            throw errno
        }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLET.rawValue
        event.data.u64 = Self.wakeupToken
        if case .failure(let errno) = Sys.nothingOrErrno({ epoll_ctl(epoll, EPOLL_CTL_ADD, eventFD, &event) }) {
            _ = Sys.close(epoll)
            _ = Sys.close(eventFD)
            throw errno
        }
    }

    func register(_ fd: CInt, token: UInt64) throws(Errno) {
        guard gate.enter() else { throw Errno.badFileDescriptor }
        defer { leave() }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
        event.data.u64 = token
        try Sys.nothingOrErrno { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) }.get()
    }

    func deregister(_ fd: CInt) {
        guard gate.enter() else { return }
        defer { leave() }
        var event = epoll_event()
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event)
    }

    func wait(timeoutMilliseconds: CInt, _ body: (ReadinessEvent) -> Void) {
        withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: Self.batch) { events in
            let count: Int
            switch Sys.valueOrErrno(retryOnInterrupt: false, {
                epoll_wait(epoll, events.baseAddress, CInt(Self.batch), timeoutMilliseconds)
            }) {
            case .success(let ready): count = Int(ready)
            case .failure: return  // EINTR: the loop comes round again.
            }
            let readMask = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue
            let writeMask = EPOLLOUT.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue
            let readClosedMask = EPOLLRDHUP.rawValue | EPOLLERR.rawValue
            for index in 0..<count {
                let event = events[index]
                let token = event.data.u64
                if token == Self.wakeupToken {
                    var value: UInt64 = 0
                    _ = read(eventFD, &value, 8)
                    continue
                }
                body(ReadinessEvent(
                    token: token,
                    readable: event.events & readMask != 0,
                    writable: event.events & writeMask != 0,
                    readClosed: event.events & readClosedMask != 0))
            }
        }
    }

    func wakeup() {
        guard gate.enter() else { return }
        defer { leave() }
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    func close() {
        if case .closeNow = gate.close() { closeDescriptors() }
    }

    private func leave() {
        if gate.leave() { closeDescriptors() }
    }

    private func closeDescriptors() {
        _ = Sys.close(epoll)
        _ = Sys.close(eventFD)
    }
}

#elseif canImport(Darwin)
typealias PlatformSelector = KqueueSelector

/// Darwin: one kqueue with EV_CLEAR (edge-triggered) filters, and an
/// EVFILT_USER event for wakeups.
final class KqueueSelector: SelectorBackend {
    private let queue: CInt
    /// See `EpollSelector.gate`.
    private let gate = UseGate()
    private static let wakeupToken = UInt64.max
    private static let batch = 256

    init() throws(Errno) {
        queue = try Sys.valueOrErrno { kqueue() }.get()
        _ = fcntl(queue, F_SETFD, FD_CLOEXEC)
        var user = kevent(
            ident: UInt(Self.wakeupToken & 0xffff), filter: Int16(EVFILT_USER), flags: UInt16(EV_ADD | EV_CLEAR),
            fflags: 0, data: 0, udata: UnsafeMutableRawPointer(bitPattern: UInt(Self.wakeupToken)))
        try Sys.nothingOrErrno { kevent(queue, &user, 1, nil, 0, nil) }.get()
    }

    func register(_ fd: CInt, token: UInt64) throws(Errno) {
        guard gate.enter() else { throw Errno.badFileDescriptor }
        defer { leave() }
        var changes = [EVFILT_READ, EVFILT_WRITE].map { filter in
            kevent(
                ident: UInt(fd), filter: Int16(filter), flags: UInt16(EV_ADD | EV_CLEAR),
                fflags: 0, data: 0, udata: UnsafeMutableRawPointer(bitPattern: UInt(token)))
        }
        try Sys.nothingOrErrno { kevent(queue, &changes, 2, nil, 0, nil) }.get()
    }

    func deregister(_ fd: CInt) {
        guard gate.enter() else { return }
        defer { leave() }
        var changes = [EVFILT_READ, EVFILT_WRITE].map { filter in
            kevent(ident: UInt(fd), filter: Int16(filter), flags: UInt16(EV_DELETE), fflags: 0, data: 0, udata: nil)
        }
        _ = kevent(queue, &changes, 2, nil, 0, nil)
    }

    func wait(timeoutMilliseconds: CInt, _ body: (ReadinessEvent) -> Void) {
        withUnsafeTemporaryAllocation(of: kevent.self, capacity: Self.batch) { events in
            var timeout = timespec(tv_sec: Int(timeoutMilliseconds / 1000), tv_nsec: Int(timeoutMilliseconds % 1000) * 1_000_000)
            let count = withUnsafePointer(to: &timeout) { pointer in
                kevent(queue, nil, 0, events.baseAddress, CInt(Self.batch), timeoutMilliseconds < 0 ? nil : pointer)
            }
            guard count > 0 else { return }
            for index in 0..<Int(count) {
                let event = events[index]
                let token = UInt64(UInt(bitPattern: event.udata))
                if token == Self.wakeupToken { continue }
                let failed = event.flags & UInt16(EV_ERROR) != 0
                let ended = event.flags & UInt16(EV_EOF) != 0
                let isRead = event.filter == Int16(EVFILT_READ)
                let isWrite = event.filter == Int16(EVFILT_WRITE)
                body(ReadinessEvent(
                    token: token,
                    readable: isRead || failed,
                    writable: isWrite || failed,
                    readClosed: (isRead && ended) || failed))
            }
        }
    }

    func wakeup() {
        guard gate.enter() else { return }
        defer { leave() }
        var user = kevent(
            ident: UInt(Self.wakeupToken & 0xffff), filter: Int16(EVFILT_USER), flags: 0,
            fflags: UInt32(NOTE_TRIGGER), data: 0, udata: UnsafeMutableRawPointer(bitPattern: UInt(Self.wakeupToken)))
        _ = kevent(queue, &user, 1, nil, 0, nil)
    }

    func close() {
        if case .closeNow = gate.close() { _ = Sys.close(queue) }
    }

    private func leave() {
        if gate.leave() { _ = Sys.close(queue) }
    }
}
#else
#error("Unsupported Platform: UDSKit's async layer needs epoll or kqueue")
#endif
