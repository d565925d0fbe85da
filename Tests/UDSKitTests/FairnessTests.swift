import Synchronization
import Testing
import UDSKit

#if canImport(Glibc)
import Glibc
#endif

@Suite("Fairness on one loop")
struct FairnessTests {
    private final class Stop: Sendable {
        let requested = Atomic<Bool>(false)
    }

    /// A peer that floods keeps every read of its connection succeeding: the
    /// task reading it must still give the loop to the other connections
    /// (here, one that only wants a byte echoed now and then). Without a
    /// budget of operations per wait, the echo never runs while the flood lasts.
    @Test("a flooding peer does not starve another connection on the same loop")
    func floodingPeerDoesNotStarveOthers() async throws {
        let loop = try EventLoop()
        defer { try? loop.shutdown() }
        let address = try uniqueAbstractAddress("fair")
        let listener = try AsyncStreamListener.bind(to: address, on: loop)
        defer { try? listener.close() }
        let flooder = try StreamSocket.connect(to: address)
        let (floodServer, _) = try await listener.accept(timeout: .seconds(30))
        let pinger = try StreamSocket.connect(to: address)
        let (pingServer, _) = try await listener.accept(timeout: .seconds(30))

        // A deep queue, refilled long before it runs dry, and one-byte reads:
        // each finds its byte, so it never says "drained" and never waits
        // while the flood lasts.
        var queueSize: CInt = 1 << 22
        _ = setsockopt(flooder.descriptor.rawValue, SOL_SOCKET, SO_SNDBUF, &queueSize, socklen_t(MemoryLayout<CInt>.size))
        let stop = Stop()
        let sink = Task(executorPreference: loop) { () -> Int in
            var total = 0
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
            defer { buffer.deallocate() }
            while true {
                // Once the flood is over, the rest goes quickly.
                let size = stop.requested.load(ordering: .relaxed) ? buffer.count : 1
                guard let count = try? await floodServer.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<size])),
                    count > 0
                else { return total }
                total += count
            }
        }
        let echo = Task(executorPreference: loop) {
            while let bytes = try? await pingServer.read(upTo: 16), !bytes.isEmpty {
                try? await pingServer.writeAll(bytes)
            }
        }
        let flood = BackgroundThread { () throws -> Int in
            let chunk = [UInt8](repeating: 0x55, count: 65536)
            var sent = 0
            while !stop.requested.load(ordering: .relaxed) {
                try flooder.writeAll(chunk)
                sent += chunk.count
            }
            try flooder.shutdown(.write)
            return sent
        }
        try await Task.sleep(for: .milliseconds(200))  // the flood is under way

        for round in UInt8(0)..<20 {
            try pinger.writeAll([round])
            let echoed = try? pinger.readExactly(1, timeout: .seconds(20))
            guard echoed == [round] else {
                Issue.record("round \(round) starved: \(String(describing: echoed))")
                break
            }
        }
        let floodWentOn = !stop.requested.load(ordering: .relaxed)
        #expect(floodWentOn, "the echoes came while the flood went on")
        stop.requested.store(true, ordering: .relaxed)
        let sent = try flood.join(timeout: endsRatherThanHangs)
        #expect(await sink.value == sent, "the sink got every flooded byte")
        try pinger.close()
        await echo.value
        for socket: Socket in [flooder, floodServer, pingServer] { try? socket.close() }
    }
}
