import Foundation
import Glibc
import Synchronization
import Testing
@testable import UDSKit

/// The calling thread, as a number.
private enum LoopThreadID {
    static var current: UInt { UInt(pthread_self()) }
}

private final class StartedLoop: Sendable { let loop = Mutex<EventLoop?>(nil) }

/// Runs `body` in `EventLoop.runOnCurrentThread` on a thread of its own;
/// returns once `body` has called its `ready`, with the loop and the thread
/// to join.
private func startLoopOnItsOwnThread<T: Sendable>(
    _ body: @escaping @Sendable (_ loop: EventLoop, _ ready: @Sendable () -> Void) async throws -> T
) -> (EventLoop, BackgroundThread<T>) {
    let started = StartedLoop()
    let run = BackgroundThread { () throws -> T in
        try EventLoop.runOnCurrentThread { loop in
            try await body(loop) { started.loop.withLock { $0 = loop } }
        }
    }
    while true {
        if let loop = started.loop.withLock({ $0 }) { return (loop, run) }
        pause(.milliseconds(1))
    }
}

/// The threads of this process, from /proc/self/task.
private func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

@Suite("Event loop lifecycle")
struct EventLoopLifecycleTests {
    /// Run in a child process: other tests open threads and descriptors in
    /// this one, and the check is exact (for threads: none more).
    @Test func aThousandLoopsStartedAndShutDownLeaveNothingBehind() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let child = try await runTestInChildProcess(named: "thousandLoopsInChildProcess", in: directory)
            #expect(child.reason == .exit)
            #expect(child.status == 0, "child output:\n\(child.output)")
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            // No loop thread is left; a worker of the global executor may
            // have ended meanwhile (an idle one does), so fewer is fine.
            let before = try #require(result["threadsBefore"].flatMap { Int($0) }, "\(result)")
            let after = try #require(result["threadsAfter"].flatMap { Int($0) }, "\(result)")
            #expect(after <= before, "\(result)")
            #expect(result["descriptorsBefore"] == result["descriptorsAfter"], "\(result)")
            #expect(result["threadsDuring"] != result["threadsBefore"], "the loops did start threads: \(result)")
        }
    }

    @Test(.enabled(if: isChildProcess(for: "thousandLoopsInChildProcess")))
    func thousandLoopsInChildProcess() async throws {
        // Warm up what the runtime starts once (the shared loop, the global executor).
        _ = EventLoop.shared
        try await Task.sleep(for: .milliseconds(50))
        let threadsBefore = threadCount()
        let descriptorsBefore = openDescriptors().count
        var threadsDuring = 0
        for round in 0..<1000 {
            let loop = try EventLoop()
            // Each loop does some work: a socket pair registered and used, a timer.
            let (first, second) = try AsyncStreamSocket.makePair(on: loop)
            try await first.writeAll([1])
            #expect(try await second.read(upTo: 1) == [1])
            try await loop.sleep(for: .microseconds(10))
            if round == 0 { threadsDuring = threadCount() }
            try first.close()
            try second.close()
            try loop.shutdown()
            #expect(loop.isShutDown)
        }
        let threadsAfter = threadCount()
        let descriptorsAfter = openDescriptors().count
        try writeChildResult([
            "threadsBefore": String(threadsBefore), "threadsDuring": String(threadsDuring),
            "threadsAfter": String(threadsAfter),
            "descriptorsBefore": String(descriptorsBefore), "descriptorsAfter": String(descriptorsAfter),
        ])
    }

    @Test func theSharedLoopRefusesToShutDown() {
        #expect(throws: SocketError.self) { try EventLoop.shared.shutdown() }
        #expect(!EventLoop.shared.isShutDown)
    }

    /// Sockets still registered when their loop stops fail with `.closed`:
    /// waiting operations at once, later ones when they would wait.
    @Test func shutdownFailsWaitingAndLaterOperationsWithClosed() async throws {
        let loop = try EventLoop()
        let (first, second) = try AsyncStreamSocket.makePair(on: loop)
        defer {
            try? first.close()
            try? second.close()
        }
        let reader = Task { try await first.read(upTo: 16) }
        let sleeper = Task { try await loop.sleep(for: .seconds(3600)) }
        try await Task.sleep(for: .milliseconds(100))
        try loop.shutdown()
        for outcome in [await reader.result.map { _ in () }, await sleeper.result] {
            guard case .failure(let error as SocketError) = outcome else {
                Issue.record("expected .closed, got \(outcome)")
                continue
            }
            #expect(error.code == .closed)
        }
        await #expect(throws: SocketError.self) { _ = try await second.read(upTo: 16) }
        #expect(throws: SocketError.self) { _ = try AsyncStreamSocket.makePair(on: loop) }
    }

    /// A task that prefers a loop that has stopped goes on running elsewhere.
    @Test func tasksPreferringAStoppedLoopStillRun() async throws {
        let loop = try EventLoop()
        try loop.shutdown()
        let value = await Task(executorPreference: loop) { 42 }.value
        #expect(value == 42)
    }

    /// Shutdown from a task running on the loop itself does not deadlock.
    @Test func aLoopCanBeShutDownFromItsOwnThread() async throws {
        let loop = try EventLoop()
        try await Task(executorPreference: loop) {
            #expect(loop.inEventLoop)
            try loop.shutdown()
        }.value
        for _ in 0..<6000 where !loop.isShutDown { try await Task.sleep(for: .milliseconds(10)) }
        #expect(loop.isShutDown)
    }

    /// A timer's action may arm another timer (a listener that pauses again
    /// does): the heap is not being changed while actions run.
    @Test func aTimerActionCanArmATimer() async throws {
        let loop = try EventLoop()
        defer { try? loop.shutdown() }
        let fired = StartCount()
        await Task(executorPreference: loop) {
            loop.schedule(LoopTimer(deadline: .now) { _ in
                fired.value.add(1, ordering: .relaxed)
                loop.schedule(LoopTimer(deadline: .now) { _ in fired.value.add(1, ordering: .relaxed) })
            })
        }.value
        for _ in 0..<6000 where fired.value.load(ordering: .relaxed) < 2 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(fired.value.load(ordering: .relaxed) == 2)
    }

    /// The kernel copies into and out of the scratch buffer at every read and
    /// write: page-aligned, whatever size it grows to.
    @Test func theScratchBufferIsPageAlignedAsItGrows() async throws {
        let loop = try EventLoop()
        defer { try? loop.shutdown() }
        let addresses = await Task(executorPreference: loop) {
            [100, 65536, 300_000].map { size in
                loop.withScratchBuffer(minimumSize: size) { buffer in
                    (UInt(bitPattern: buffer.baseAddress), buffer.count)
                }
            }
        }.value
        for (index, size) in [100, 65536, 300_000].enumerated() {
            #expect(addresses[index].0 % 4096 == 0, "\(size) bytes at \(addresses[index].0)")
            #expect(addresses[index].1 == size)
        }
    }

    @Test func sleepIsCancellable() async throws {
        let loop = try EventLoop()
        defer { try? loop.shutdown() }
        let sleeper = Task { try await loop.sleep(for: .seconds(3600)) }
        try await Task.sleep(for: .milliseconds(50))
        sleeper.cancel()
        await #expect(throws: CancellationError.self) { try await sleeper.value }
    }

    /// A group hands its loops out in turn: accepted connections alternate.
    @Test func aGroupSpreadsAcceptedConnectionsOverItsLoops() async throws {
        let group = try EventLoopGroup(loopCount: 2)
        defer { try? group.shutdown() }
        let address = try uniqueAbstractAddress("group")
        let listener = try AsyncStreamListener.bind(to: address, on: group)
        defer { try? listener.close() }
        var clients: [StreamSocket] = []
        var loops: [ObjectIdentifier] = []
        for _ in 0..<4 {
            let client = try StreamSocket.connect(to: address)
            clients.append(client)
            let (connection, _) = try await listener.accept(timeout: .seconds(30))
            loops.append(ObjectIdentifier(connection.eventLoop))
            // Served on its own loop, it echoes.
            let echoed = try await Task(executorPreference: connection.eventLoop) {
                #expect(connection.eventLoop.inEventLoop)
                try client.writeAll([7])
                let byte = try await connection.read(upTo: 1, timeout: .seconds(30))
                try connection.close()
                return byte
            }.value
            #expect(echoed == [7])
        }
        #expect(Set(loops).count == 2)
        #expect(loops[0] != loops[1] && loops[0] == loops[2] && loops[1] == loops[3])
        #expect(throws: SocketError.self) { _ = try EventLoopGroup(loopCount: 0) }
    }
}

// MARK: Connect interrupted by a signal

private let interruptions = Atomic<Int>(0)

/// Shared by reference: an `Atomic` captured by an escaping closure is not
/// the caller's.
private final class Flag: Sendable {
    let value = Atomic<Bool>(false)
}

@Suite("Connect interrupted by a signal")
struct ConnectInterruptedTests {
    /// A blocking Unix connect waits while the listener's backlog is full. A
    /// signal whose handler was installed without SA_RESTART interrupts it:
    /// the call must not come back "connected" on a socket that is not, but
    /// go on until the listener has room, and then be connected for real.
    /// In a child process: the handler is process-wide.
    @Test func aUnixConnectInterruptedBySignalsCompletesForReal() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let child = try await runTestInChildProcess(named: "interruptedConnectInChildProcess", in: directory)
            #expect(child.reason == .exit)
            #expect(child.status == 0, "child output:\n\(child.output)")
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            #expect(result["interruptions"].flatMap(Int.init) ?? 0 > 0, "\(result)")
            #expect(result["returnedEarly"] == "false", "\(result)")
            #expect(result["echo"] == "ok", "\(result)")
        }
    }

    @Test(.enabled(if: isChildProcess(for: "interruptedConnectInChildProcess")))
    func interruptedConnectInChildProcess() throws {
        _ = interruptions.load(ordering: .relaxed)
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in interruptions.add(1, ordering: .relaxed) }
        action.sa_flags = 0  // no SA_RESTART: the blocked connect returns EINTR
        sigemptyset(&action.sa_mask)
        sigaction(SIGUSR2, &action, nil)

        try withTemporaryDirectory { directory in
            let address = try UnixAddress(directory.path("full.sock"))
            // Backlog 0: one connection waits in the queue, the next blocks.
            let listener = try StreamListener.bind(to: address, options: BindOptions(backlog: 0))
            let queued = try StreamSocket.connect(to: address)
            let connectingThread = Mutex<pthread_t?>(nil)
            let connected = Flag()
            let client = BackgroundThread { () throws -> StreamSocket in
                // Threads made from the concurrency pool's inherit its mask,
                // which blocks signals: let this one be interrupted.
                var unblocked = sigset_t()
                sigemptyset(&unblocked)
                sigaddset(&unblocked, SIGUSR2)
                pthread_sigmask(SIG_UNBLOCK, &unblocked, nil)
                connectingThread.withLock { $0 = pthread_self() }
                let socket = try StreamSocket.connect(to: address)
                connected.value.store(true, ordering: .releasing)
                return socket
            }
            while connectingThread.withLock({ $0 }) == nil { pause(.milliseconds(1)) }
            let thread = connectingThread.withLock { $0! }
            // Interrupt it many times while it waits for room.
            for _ in 0..<30 {
                pthread_kill(thread, SIGUSR2)
                pause(.milliseconds(10))
            }
            let returnedEarly = connected.value.load(ordering: .acquiring)
            // Make room: the blocked connect goes through.
            let (first, _) = try listener.accept()
            let socket = try client.join()
            let (second, _) = try listener.accept()
            try socket.writeAll(Array("ping".utf8))
            let echo = try second.readExactly(4) == Array("ping".utf8) ? "ok" : "wrong bytes"
            try writeChildResult([
                "interruptions": String(interruptions.load(ordering: .relaxed)),
                "returnedEarly": String(returnedEarly), "echo": echo,
            ])
            withExtendedLifetime((queued, first)) {}
        }
    }

    // MARK: A loop on the caller's thread

    @Test func aLoopOnTheCurrentThreadRunsItsTasksAndSocketsThere() throws {
        struct Seen: Sendable {
            var caller: UInt = 0
            var body: UInt = 0
            var children: [UInt] = []
            var inEventLoop = false
            var echoed: [UInt8] = []
        }
        let run = BackgroundThread { () throws -> (Seen, EventLoop) in
            let caller = LoopThreadID.current
            return try EventLoop.runOnCurrentThread { loop in
                var seen = Seen(caller: caller, body: LoopThreadID.current, inEventLoop: loop.inEventLoop)
                let (first, second) = try AsyncStreamSocket.makePair(on: loop)
                // Two child tasks on the loop, one waiting for the other's bytes.
                seen.children = try await withThrowingTaskGroup(of: UInt.self) { group in
                    group.addTask(executorPreference: loop) {
                        #expect(try await second.read(upTo: 5) == Array("hello".utf8))
                        try await second.writeAll(Array("back".utf8))
                        return LoopThreadID.current
                    }
                    group.addTask(executorPreference: loop) {
                        try await first.writeAll(Array("hello".utf8))
                        return LoopThreadID.current
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                seen.echoed = try await first.read(upTo: 4)
                try first.close()
                try second.close()
                return (seen, loop)
            }
        }
        let (seen, loop) = try run.join(timeout: endsRatherThanHangs)
        #expect(seen.body == seen.caller)
        #expect(seen.children == [seen.caller, seen.caller])
        #expect(seen.inEventLoop)
        #expect(seen.echoed == Array("back".utf8))
        #expect(loop.isShutDown, "the loop stops when its body returns")
    }

    @Test func aLoopOnTheCurrentThreadRethrowsWhatItsBodyThrew() throws {
        struct Refused: Error, Equatable {}
        let run = BackgroundThread { () throws -> EventLoop? in
            let used = Mutex<EventLoop?>(nil)
            do {
                _ = try EventLoop.runOnCurrentThread { (loop) throws -> Int in
                    used.withLock { $0 = loop }
                    throw Refused()
                }
            } catch is Refused {
                return used.withLock { $0 }
            }
            return nil
        }
        let loop = try #require(try run.join(timeout: endsRatherThanHangs), "the body's error came back as itself")
        #expect(loop.isShutDown)
    }

    /// Another thread's `shutdown()` while the body waits on something off
    /// the loop (a sleep on the global executor): the loop stops, the body
    /// goes on elsewhere, and the caller still gets its value.
    @Test func aLoopOnTheCurrentThreadStoppedWhileItsBodyWaitsElsewhereStillReturnsItsValue() throws {
        let (loop, run) = startLoopOnItsOwnThread { _, ready in
            ready()
            try await Task.sleep(for: .milliseconds(300))
            return 7
        }
        try loop.shutdown()
        #expect(loop.isShutDown)
        #expect(try run.join(timeout: endsRatherThanHangs) == 7)
    }

    /// A loop run from inside another loop's job would stall that loop: it is refused.
    @Test func aLoopOnTheCurrentThreadIsRefusedOnALoopsThread() async throws {
        let loop = try EventLoop()
        defer { try? loop.shutdown() }
        let onAThreadOfItsOwn = await Task(executorPreference: loop) { () -> SocketError.Code? in
            #expect(loop.inEventLoop)
            do {
                _ = try EventLoop.runOnCurrentThread { _ in 1 }
                return nil
            } catch let error as SocketError {
                return error.code
            } catch {
                return nil
            }
        }.value
        #expect(onAThreadOfItsOwn == .unsupported("running a loop on a thread that runs one already is"))

        let nested = BackgroundThread { () throws -> SocketError.Code? in
            try EventLoop.runOnCurrentThread { _ in
                do {
                    _ = try EventLoop.runOnCurrentThread { _ in 1 }
                    return nil
                } catch let error as SocketError {
                    return error.code
                }
            }
        }
        #expect(try nested.join(timeout: endsRatherThanHangs) == .unsupported("running a loop on a thread that runs one already is"))
    }

    /// Another thread's `shutdown()` ends the loop early: the body's wait
    /// fails with `.closed`, it returns, and so does the caller.
    @Test func shuttingDownALoopOnTheCurrentThreadFromAnotherEndsItsWaits() throws {
        let (loop, run) = startLoopOnItsOwnThread { (loop, ready) async throws -> SocketError.Code? in
            let (first, second) = try AsyncStreamSocket.makePair(on: loop)
            ready()
            defer { withExtendedLifetime(second) {} }
            do {
                _ = try await first.read(upTo: 1)
                return nil
            } catch let error as SocketError {
                return error.code
            }
        }
        try loop.shutdown()
        #expect(loop.isShutDown)
        #expect(try run.join(timeout: endsRatherThanHangs) == .closed)
    }
}
