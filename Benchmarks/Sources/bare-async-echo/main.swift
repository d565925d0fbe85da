// The least an async/await echo server can do on this concurrency runtime,
// with nothing of UDSKit: one thread runs epoll and is the task executor its
// connection tasks prefer; each connection is a task that reads and writes as
// the C server does (edge-triggered, a short read means drained) and suspends
// on a bare continuation that the loop resumes on the next edge. No
// cancellation, no deadlines, no locks on the loop's own path, one shared
// buffer. What it costs above the C server is what the runtime's suspension
// costs; what UDSKit's async server costs above it is UDSKit's.
//
//   swift run -c release --package-path Benchmarks bare-async-echo PATH [--loop-thread]
//
// By default the loop runs on the main thread and the process has that one
// thread, as the C server has; `--loop-thread` runs it on a second thread
// (main waits), as a library's loop runs, to show what a second thread costs
// the kernel per system call.
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
import CBareEpoll

/// Runs connection tasks on the thread that waits in epoll.
final class Loop: TaskExecutor, @unchecked Sendable {
    // Touched only on the loop's thread.
    private var jobs: [UnownedJob] = []
    private var running: [UnownedJob] = []
    private var connections: [Connection?] = []
    private let epoll = epoll_create1(CInt(EPOLL_CLOEXEC))
    private let listener: CInt
    private var loopThread = pthread_self()
    private let remote = Mutex<[UnownedJob]>([])
    private let wakeup = eventfd(0, CInt(EFD_NONBLOCK | EFD_CLOEXEC))

    init(listener: CInt) {
        self.listener = listener
        add(listener, events: EPOLLIN.rawValue, data: UInt64.max)
        add(wakeup, events: EPOLLIN.rawValue, data: UInt64.max - 1)
    }

    private func add(_ fd: CInt, events: UInt32, data: UInt64) {
        var event = epoll_event(events: events, data: epoll_data_t(u64: data))
        precondition(epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if pthread_equal(pthread_self(), loopThread) != 0 {
            jobs.append(job)
        } else {
            remote.withLock { $0.append(job) }
            var one: UInt64 = 1
            _ = write(wakeup, &one, 8)
        }
    }

    func run() -> Never {
        loopThread = pthread_self()
        let executor = asUnownedTaskExecutor()
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        while true {
            while !jobs.isEmpty {
                swap(&running, &jobs)
                for job in running { job.runSynchronously(on: executor) }
                running.removeAll(keepingCapacity: true)
            }
            let ready = epoll_wait(epoll, &events, CInt(events.count), -1)
            for index in 0..<max(Int(ready), 0) {
                let data = events[index].data.u64
                if data == UInt64.max {
                    accept()
                } else if data == UInt64.max - 1 {
                    var count: UInt64 = 0
                    _ = read(wakeup, &count, 8)
                    jobs += remote.withLock { queued in defer { queued = [] }; return queued }
                } else if let connection = connections[Int(data)] {
                    let flags = events[index].events
                    if flags & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
                        connection.readable = true
                    }
                    if flags & (EPOLLOUT.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
                        connection.writable = true
                    }
                    if let waiter = connection.waiter {
                        connection.waiter = nil
                        waiter.resume()
                    }
                }
            }
        }
    }

    private func accept() {
        while true {
            let fd = bare_accept(listener)
            guard fd >= 0 else { return }
            if connections.count <= Int(fd) { connections += Array(repeating: nil, count: Int(fd) + 1 - connections.count) }
            let connection = Connection(fd: fd)
            connections[Int(fd)] = connection
            add(fd, events: EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue, data: UInt64(fd))
            Task(executorPreference: self) { await connection.serve(on: self) }
        }
    }

    func remove(_ connection: Connection) {
        connections[Int(connection.fd)] = nil
        close(connection.fd)
    }
}

/// One connection's state; touched only on the loop's thread.
final class Connection: @unchecked Sendable {
    let fd: CInt
    var readable = true
    var writable = true
    var waiter: UnsafeContinuation<Void, Never>?
    nonisolated(unsafe) static let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 4096)

    init(fd: CInt) { self.fd = fd }

    /// Suspends until the loop sees the next edge: no hop back to any isolation.
    private func nextEdge() async {
        await _unsafeInheritExecutor_withUnsafeContinuation { waiter = $0 }
    }

    func serve(on loop: Loop) async {
        let buffer = Self.buffer
        defer { loop.remove(self) }
        while true {
            while !readable { await nextEdge() }
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count < 0 {
                if errno == EAGAIN { readable = false; continue }
                if errno == EINTR { continue }
                return
            }
            if count == 0 { return }
            if count < buffer.count { readable = false }  // drained: wait for the next edge
            var written = send(fd, buffer.baseAddress, count, CInt(MSG_NOSIGNAL))
            if written == count { continue }
            if written < 0 {
                guard errno == EAGAIN || errno == EINTR else { return }
                written = 0
            }
            // The socket is full: keep the rest (the buffer is every task's)
            // and wait until it can be written.
            let pending = Array(UnsafeRawBufferPointer(rebasing: buffer[written..<count]))
            var offset = 0
            writable = false
            while offset < pending.count {
                while !writable { await nextEdge() }
                let sent = pending.withUnsafeBytes {
                    send(fd, $0.baseAddress! + offset, $0.count - offset, CInt(MSG_NOSIGNAL))
                }
                if sent < 0 {
                    if errno == EAGAIN { writable = false; continue }
                    if errno == EINTR { continue }
                    return
                }
                offset += sent
                if offset < pending.count { writable = false }
            }
        }
    }
}

let arguments = CommandLine.arguments.dropFirst()
guard let path = arguments.first(where: { !$0.hasPrefix("--") }) else {
    FileHandle.standardError.write("usage: bare-async-echo PATH [--loop-thread]\n".data(using: .utf8)!)
    exit(2)
}
signal(SIGPIPE, SIG_IGN)
unlink(path)
let listener = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0)
var address = sockaddr_un()
address.sun_family = sa_family_t(AF_UNIX)
withUnsafeMutableBytes(of: &address.sun_path) { raw in
    let bytes = Array(path.utf8.prefix(raw.count - 1))
    raw.copyBytes(from: bytes)
}
let bound = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
}
guard bound == 0, listen(listener, SOMAXCONN) == 0 else {
    FileHandle.standardError.write("bare-async-echo: bind/listen \(path): \(String(cString: strerror(errno)))\n".data(using: .utf8)!)
    exit(1)
}
FileHandle.standardError.write("listening on \(path)\n".data(using: .utf8)!)
let loop = Loop(listener: listener)
if arguments.contains("--loop-thread") {
    Thread.detachNewThread { loop.run() }
    while true { pause() }
} else {
    loop.run()
}
#else
print("bare-async-echo: Linux only (epoll)")
#endif
