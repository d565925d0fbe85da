import Foundation
import Glibc
import Testing
import UDSKit

/// 1,000 connect/accept/echo/close cycles must leave no descriptor behind.
///
/// Counting /proc/self/fd is exact only in a process where nothing else opens
/// or closes descriptors, and Swift Testing runs every other test (of both test
/// targets) in parallel in this process. So the count is taken in a child
/// process: this test binary run again with a filter that selects only
/// `cyclesInChildProcess`, which is enabled by an environment variable. There
/// the count before and after must be equal, with no tolerance.
///
/// In this process, `everySocketDescriptorIsClosed` checks each descriptor the
/// cycles created by identity (device and inode), which stays exact whatever
/// other tests do: a leaked descriptor keeps its number and its inode, while a
/// number reused by another test names a different inode.
@Suite("Descriptor leaks", .serialized)
struct DescriptorLeakTests {
    static let cycles = 1_000

    /// One descriptor to check after its socket is gone.
    struct Opened {
        let what: String
        let descriptor: CInt
        let identity: FileIdentity
    }

    /// Runs `count` cycles against `listener`: connect (every tenth from a bound
    /// client path), accept, echo both ways, then close or just drop each side.
    /// `check` is called after every cycle with the descriptors it opened.
    static func runCycles(
        _ count: Int, listener: StreamListener, address: UnixAddress, clientPath: String,
        check: ([Opened]) -> Void
    ) throws {
        let clientAddress = try UnixAddress(path: clientPath)
        let message = Array("echo".utf8)
        for cycle in 0..<count {
            var opened: [Opened] = []
            do {
                let bindClient = cycle % 10 == 0
                let client = try StreamSocket.connect(to: address, from: bindClient ? clientAddress : nil)
                let (server, peer) = try listener.accept()
                if bindClient && peer != .unix(clientAddress) {
                    Issue.record("cycle \(cycle): peer \(peer), expected \(clientAddress)")
                }
                for (what, socket) in [("client", client), ("server", server)] {
                    if let identity = fileIdentity(ofDescriptor: socket.descriptor.rawValue) {
                        opened.append(Opened(what: "\(what) of cycle \(cycle)", descriptor: socket.descriptor.rawValue, identity: identity))
                    }
                }
                try client.writeAll(message)
                let request = try server.readExactly(message.count)
                try server.writeAll(request)
                let reply = try client.readExactly(message.count)
                if reply != message { Issue.record("cycle \(cycle): echo came back as \(reply)") }

                // Explicit close, or just dropping the socket (deinit closes it).
                switch cycle % 4 {
                case 0: try client.close(); try server.close()
                case 1: try server.close()  // the client is dropped
                case 2: try client.close()  // the accepted socket is dropped
                default: break  // both are dropped
                }
            }
            if fileExists(atPath: clientPath) {
                Issue.record("cycle \(cycle): the client's socket file was left behind")
                unlink(clientPath)
            }
            check(opened)
        }
    }

    // MARK: In this process

    @Test func everySocketDescriptorIsClosed() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("leak.sock")
            var leaked: [String] = []
            func checkClosed(_ opened: [Opened]) {
                for entry in opened where fileIdentity(ofDescriptor: entry.descriptor) == entry.identity {
                    leaked.append("\(entry.what) (descriptor \(entry.descriptor))")
                }
            }
            var checked = 0
            // Listeners come and go too: every 250 cycles a new one, the old
            // one alternately closed and dropped.
            for round in 0..<4 {
                var listener: StreamListener? = try StreamListener.bind(to: address)
                let listenerDescriptor = listener!.descriptor.rawValue
                let listenerIdentity = try #require(fileIdentity(ofDescriptor: listenerDescriptor))
                try Self.runCycles(
                    Self.cycles / 4, listener: listener!, address: address, clientPath: directory.path("client.sock")
                ) { opened in
                    checked += opened.count
                    checkClosed(opened)
                }
                if round % 2 == 0 { try listener!.close() }
                listener = nil
                checkClosed([Opened(what: "listener \(round)", descriptor: listenerDescriptor, identity: listenerIdentity)])
                #expect(!fileExists(atPath: directory.path("leak.sock")), "listener \(round) left its file")
            }
            #expect(checked == 2 * Self.cycles)
            #expect(leaked.isEmpty, "still open: \(leaked.prefix(10))")
        }
    }

    // MARK: In a quiet child process

    @Test func descriptorCountIsUnchangedInAChildProcess() async throws {
        try await withTemporaryDirectoryAsync { directory in
            let child = try await runTestInChildProcess(named: "cyclesInChildProcess", in: directory)
            #expect(child.reason == .exit)
            #expect(child.status == 0, "child output:\n\(child.output)")
            // The child must really have run the cycles: a filter that matched
            // nothing would also exit with 0, but write no result.
            let result = try #require(child.result, "no result from the child; output:\n\(child.output)")
            let before = try #require(result["before"].flatMap { Int($0) })
            let after = try #require(result["after"].flatMap { Int($0) })
            #expect(result["cycles"] == String(Self.cycles))
            #expect(before > 0)
            #expect(after == before, "descriptors before \(before), after \(after); extra: \(result["extra"] ?? "")")
        }
    }

    /// Runs only in the child that `descriptorCountIsUnchangedInAChildProcess`
    /// starts, where it is the only test: the set of open descriptors must be
    /// the same after the cycles as before.
    @Test(.enabled(if: isChildProcess(for: "cyclesInChildProcess")))
    func cyclesInChildProcess() throws {
        try withTemporaryDirectory { directory in
            let address = try directory.address("leak.sock")
            let clientPath = directory.path("client.sock")
            // Warm up: anything the runtime opens once, on first use, is open by now.
            do {
                let listener = try StreamListener.bind(to: address)
                try Self.runCycles(8, listener: listener, address: address, clientPath: clientPath) { _ in }
            }
            pause(.milliseconds(50))
            let before = openDescriptors()

            var listener: StreamListener? = try StreamListener.bind(to: address)
            try Self.runCycles(Self.cycles / 2, listener: listener!, address: address, clientPath: clientPath) { _ in }
            try listener!.close()
            listener = try StreamListener.bind(to: address)
            try Self.runCycles(Self.cycles / 2, listener: listener!, address: address, clientPath: clientPath) { _ in }
            listener = nil  // dropped, not closed

            // A leak does not go away by waiting; the test runner's own
            // descriptors, if it opened any just now, might.
            var after = openDescriptors()
            for _ in 0..<3 where after != before {
                pause(.milliseconds(100))
                after = openDescriptors()
            }
            let extra = after.subtracting(before).sorted().map { "\($0):\(descriptorTarget($0))" }
            let missing = before.subtracting(after).sorted().map(String.init)
            try writeChildResult([
                "cycles": String(Self.cycles), "before": String(before.count), "after": String(after.count),
                "extra": extra.prefix(20).joined(separator: ","), "missing": missing.joined(separator: ","),
            ])
            #expect(extra.isEmpty, "\(extra.count) descriptors more than before: \(extra.prefix(20))")
            #expect(missing.isEmpty, "descriptors closed that were open before: \(missing)")
        }
    }
}
