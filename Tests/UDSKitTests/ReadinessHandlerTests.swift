import Glibc
import Synchronization
import Testing
@testable import UDSKit

/// Loop-thread state for a handler: touched on the loop's thread only.
private final class LoopOwned<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

@Suite("Readiness handlers")
struct ReadinessHandlerTests {
    /// A server made of handlers only: the listener's accepts connections,
    /// each connection's echoes what it reads. Clients on other threads check
    /// every byte, through partial writes (a megabyte each way).
    @Test func aServerOfHandlersEchoesEveryByte() async throws {
        let loop = try EventLoop()
        defer { try? loop.shutdown() }
        let address = try uniqueAbstractAddress("handlers")
        let listener = try AsyncStreamListener.bind(to: address, on: loop)
        defer { try? listener.close() }
        let firstCall = LoopOwned<Readiness?>(nil)
        let sessions = LoopOwned<[AsyncStreamSocket]>([])
        await Task(executorPreference: loop) {
            listener.setReadinessHandler { readiness in
                if firstCall.value == nil { firstCall.value = readiness }
                while let (connection, _) = try? listener.tryAccept() {
                    sessions.value.append(connection)
                    let unsent = LoopOwned<[UInt8]>([])
                    connection.setReadinessHandler { _ in
                        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
                        defer { buffer.deallocate() }
                        while true {
                            if !unsent.value.isEmpty {
                                let written = (try? unsent.value.withUnsafeBytes { try connection.tryWrite($0) }) ?? nil
                                guard let written else { return }
                                unsent.value.removeFirst(written)
                                if !unsent.value.isEmpty { return }
                            }
                            guard let count = try? connection.tryRead(into: buffer) else { return }
                            if count == 0 {
                                connection.setReadinessHandler(nil)
                                try? connection.close()
                                return
                            }
                            unsent.value = Array(buffer[..<count])
                        }
                    }
                }
            }
        }.value
        let clients = (0..<4).map { index in
            BackgroundThread { () throws -> Bool in
                let client = try StreamSocket.connect(to: address)
                let payload = patternBytes(count: 1 << 20, seed: UInt64(index))
                let writer = BackgroundThread {
                    try client.writeAll(payload)
                    try client.shutdown(.write)
                }
                var echoed: [UInt8] = []
                while true {
                    let chunk = try client.read(upTo: 65536)
                    if chunk.isEmpty { break }
                    echoed += chunk
                }
                try writer.join()
                return echoed == payload
            }
        }
        for client in clients { #expect(try client.join(timeout: .seconds(120))) }
        let first = await Task(executorPreference: loop) { firstCall.value }.value
        #expect(first == .both, "a handler is called once at once")
    }

    /// A handler is set on its loop's thread: elsewhere it traps, so a
    /// mistake cannot race the loop.
    @Test func removingAHandlerStopsTheCalls() async throws {
        let loop = try EventLoop()
        defer { try? loop.shutdown() }
        let (first, second) = try AsyncStreamSocket.makePair(on: loop)
        defer {
            try? first.close()
            try? second.close()
        }
        let calls = LoopOwned(0)
        await Task(executorPreference: loop) {
            first.setReadinessHandler { _ in calls.value += 1 }
            first.setReadinessHandler(nil)
        }.value
        try await second.writeAll([1, 2, 3])
        try await Task.sleep(for: .milliseconds(100))
        let seen = await Task(executorPreference: loop) { calls.value }.value
        #expect(seen == 1, "only the first, immediate call")
        // Without a handler, tasks wait as before.
        #expect(try await first.read(upTo: 8, timeout: endsRatherThanHangs) == [1, 2, 3])
    }
}
