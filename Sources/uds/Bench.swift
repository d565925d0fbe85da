import ArgumentParser
import Foundation
import Histogram
import Synchronization
import UDSKit

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Load an AF_UNIX echo server: ping-pong latency and round trips/s, or streaming throughput.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds bench <address> [--mode <mode>] [--size <size>] [options]",
        discussion: """
            ping-pong: each of C connections sends S bytes, waits for the same S bytes
            back (checked byte for byte), and repeats, for the given duration after a
            warm-up. Prints round trips/s and the latency percentiles (p50, p99, p99.9)
            from an HDR histogram.

            stream: one connection writes --bytes in --write-size writes while reading
            the echo; both directions are checked byte for byte. Prints MB/s.

            With --server-pid, the server's CPU time (user + system, from
            /proc/PID/stat) over the measured interval is reported per round trip.

            The client is one event-loop thread (UDSKit's async API). A progress line
            is written to standard error every second.

            Examples:
              uds bench ./uds_socket --connections 10 --size 100 --duration 5
              uds bench ./uds_socket --mode stream --bytes 1073741824 --json
            """
    )

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case pingpong = "ping-pong"
        case stream
    }

    @Argument(help: "The echo server's address.")
    var address: String

    @Option(help: "Round trips one message at a time, or a stream.")
    var mode: Mode = .pingpong

    @Option(parsing: .unconditional, help: "Connections at once (ping-pong), \(OptionRange.connections.help); connections times size at most 1 GiB.")
    var connections: Int = 1

    @Option(parsing: .unconditional, help: "The size of each message in bytes (ping-pong), from \(OptionRange.bufferSize.help).")
    var size: Int = 100

    @Option(parsing: .unconditional, help: "How long to measure (ping-pong): a duration, \(OptionRange.positiveSeconds.help).")
    var duration = DurationOption(seconds: 5)

    @Option(parsing: .unconditional, help: "How long to warm up first (ping-pong): a duration, \(OptionRange.seconds.help).")
    var warmup = DurationOption(seconds: 1)

    @Option(parsing: .unconditional, help: "The number of bytes to stream (stream), from \(OptionRange.streamLength.help).")
    var bytes: Int = 1 << 30

    @Option(parsing: .unconditional, help: "The size of each write in bytes (stream), from \(OptionRange.bufferSize.help).")
    var writeSize: Int = 65536

    @Option(help: "The server's pid: report its CPU time per operation.")
    var serverPid: Int32?

    @Flag(help: "Print the result as one JSON object.")
    var json = false

    @Flag(help: "No progress line.")
    var quiet = false

    func validate() throws {
        try OptionRange.connections.check("--connections", connections)
        try OptionRange.bufferSize.check("--size", size)
        try OptionRange.positiveSeconds.check("--duration", duration)
        try OptionRange.seconds.check("--warmup", warmup)
        try OptionRange.streamLength.check("--bytes", bytes)
        try OptionRange.bufferSize.check("--write-size", writeSize)
        if mode == .pingpong {
            try OptionRange.messagesInFlight.check("--connections", connections * size, given: "\(connections) with --size \(size)")
        }
    }

    func run() async throws {
        let address = try parseAddress(address)
        let loop = EventLoop.shared
        do {
            let result: BenchResult
            switch mode {
            case .pingpong:
                result = try await Task(executorPreference: loop) { try await pingPong(address, loop: loop) }.value
            case .stream:
                result = try await Task(executorPreference: loop) { try await stream(address, loop: loop) }.value
            }
            print(json ? result.json : result.text)
        } catch {
            report(error)  // A socket error, or an echo that differs from what was sent.
            throw ExitCode.failure
        }
    }

    // MARK: Ping-pong

    private func pingPong(_ address: UnixAddress, loop: EventLoop) async throws -> BenchResult {
        var sockets: [AsyncStreamSocket] = []
        for _ in 0..<connections {
            let socket = try await AsyncStreamSocket.connect(to: address, timeout: .seconds(10), on: loop)
            socket.keepsIncomingDescriptors = false  // plain recv: the cheapest read
            sockets.append(socket)
        }
        defer { for socket in sockets { try? socket.close() } }

        let clock = ContinuousClock()
        let start = clock.now
        let measureFrom = start.advanced(by: warmup.duration)
        let end = measureFrom.advanced(by: duration.duration)
        let completed = Counter()
        let progress = quiet ? nil : Task { await reportProgress(completed, until: end, unit: "round trips") }
        defer { progress?.cancel() }

        // The server's CPU time over exactly the measured window.
        let serverPid = self.serverPid
        let cpuWindow = Task {
            try await Task.sleep(until: measureFrom, clock: clock)
            let before = CPUTime(pid: serverPid)
            try await Task.sleep(until: end, clock: clock)
            return (before, CPUTime(pid: serverPid))
        }
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        let size = self.size
        try await withThrowingTaskGroup(of: Histogram<UInt64>.self) { group in
            for (index, socket) in sockets.enumerated() {
                group.addTask {
                    try await pingPongLoop(
                        socket, size: size, seed: UInt8(truncatingIfNeeded: index),
                        measureFrom: measureFrom, end: end, completed: completed)
                }
            }
            for try await partial in group { histogram.add(partial) }
        }
        let (cpuBefore, cpuAfter) = try await cpuWindow.value
        let roundTrips = Int(histogram.totalCount)
        return BenchResult(
            mode: "ping-pong", connections: connections, size: size, seconds: duration.seconds,
            operations: roundTrips, histogram: histogram,
            serverCPUSeconds: cpuAfter.flatMap { after in cpuBefore.map { after.seconds - $0.seconds } }, bytes: nil)
    }

    // MARK: Streaming

    private func stream(_ address: UnixAddress, loop: EventLoop) async throws -> BenchResult {
        let socket = try await AsyncStreamSocket.connect(to: address, timeout: .seconds(10), on: loop)
        socket.keepsIncomingDescriptors = false
        defer { try? socket.close() }
        let total = bytes
        let writeSize = self.writeSize
        let received = Counter()
        let clock = ContinuousClock()
        let progress = quiet ? nil : Task {
            await reportProgress(received, until: clock.now.advanced(by: .seconds(3600)), unit: "bytes echoed")
        }
        defer { progress?.cancel() }
        let cpuBefore = CPUTime(pid: serverPid)
        let start = clock.now
        async let written: Void = streamWriter(socket, total: total, writeSize: writeSize)
        try await streamReader(socket, total: total, received: received)
        try await written
        let elapsed = clock.now - start
        let cpuAfter = CPUTime(pid: serverPid)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return BenchResult(
            mode: "stream", connections: 1, size: writeSize, seconds: seconds,
            operations: (total + writeSize - 1) / writeSize, histogram: nil,
            serverCPUSeconds: cpuAfter.flatMap { after in cpuBefore.map { after.seconds - $0.seconds } }, bytes: total)
    }
}

/// The stream's content: byte i is `StreamPattern.byte(i)`, so every read can
/// be checked against its position with one memcmp.
enum StreamPattern {
    static let period = 251  // prime, so it never lines up with buffer sizes

    static func byte(_ position: Int) -> UInt8 { UInt8(truncatingIfNeeded: position % period &* 7 &+ 1) }

    /// `count + period` bytes, so any window of `count` starting at phase < period fits.
    static func buffer(count: Int) -> UnsafeMutableRawBufferPointer {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count + period, alignment: 16)
        for index in 0..<buffer.count { buffer[index] = byte(index) }
        return buffer
    }
}

private func streamWriter(_ socket: AsyncStreamSocket, total: Int, writeSize: Int) async throws {
    let source = StreamPattern.buffer(count: writeSize)
    defer { source.deallocate() }
    var sent = 0
    while sent < total {
        let count = min(writeSize, total - sent)
        let phase = sent % StreamPattern.period
        try await socket.writeAll(UnsafeRawBufferPointer(rebasing: source[phase..<(phase + count)]))
        sent += count
    }
    try socket.shutdown(.write)
}

private func streamReader(_ socket: AsyncStreamSocket, total: Int, received: Counter) async throws {
    let readSize = 1 << 18
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: readSize, alignment: 16)
    let expected = StreamPattern.buffer(count: readSize)
    defer {
        buffer.deallocate()
        expected.deallocate()
    }
    var position = 0
    while true {
        let count = try await socket.read(into: buffer)
        if count == 0 { break }
        let phase = position % StreamPattern.period
        guard memcmp(buffer.baseAddress!, expected.baseAddress! + phase, count) == 0 else {
            throw BenchFailure("the echo differs from what was sent, within bytes \(position)..<\(position + count)")
        }
        position += count
        received.value.store(position, ordering: .relaxed)
    }
    guard position == total else {
        throw BenchFailure("the server closed after echoing \(position) of \(total) bytes")
    }
}

private func pingPongLoop(
    _ socket: AsyncStreamSocket, size: Int, seed: UInt8,
    measureFrom: ContinuousClock.Instant, end: ContinuousClock.Instant, completed: Counter
) async throws -> Histogram<UInt64> {
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    let message = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    // Room for more than one reply: a read that returns less than it had room
    // for tells the socket layer the socket is drained, so the next read waits
    // for readiness instead of first hearing "would block".
    let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size * 2, 65536), alignment: 16)
    defer {
        message.deallocate()
        reply.deallocate()
    }
    for index in 0..<size { message[index] = UInt8(truncatingIfNeeded: index &* 13 &+ Int(seed)) }
    let clock = ContinuousClock()
    while true {
        let started = clock.now
        if started >= end { return histogram }
        try await socket.writeAll(UnsafeRawBufferPointer(message))
        var received = 0
        while received < size {
            let count = try await socket.read(into: UnsafeMutableRawBufferPointer(rebasing: reply[received...]))
            if count == 0 { throw BenchFailure("the server closed the connection") }
            received += count
        }
        let finished = clock.now
        guard received == size else { throw BenchFailure("the server sent more than the message back") }
        guard memcmp(message.baseAddress!, reply.baseAddress!, size) == 0 else {
            throw BenchFailure("a reply differs from the message sent")
        }
        if started >= measureFrom {
            let elapsed = started.duration(to: finished).components
            _ = histogram.record(UInt64(elapsed.seconds) * 1_000_000_000 + UInt64(elapsed.attoseconds / 1_000_000_000))
            completed.value.add(1, ordering: .relaxed)
        }
    }
}

private func reportProgress(_ counter: Counter, until end: ContinuousClock.Instant, unit: String) async {
    var last = 0
    while ContinuousClock.now < end {
        do { try await Task.sleep(for: .seconds(1)) } catch { break }
        let now = counter.value.load(ordering: .relaxed)
        FileHandle.standardError.write("\r\(now) \(unit) (+\(now - last)/s)   ".data(using: .utf8)!)
        last = now
    }
    FileHandle.standardError.write("\n".data(using: .utf8)!)
}

/// A count shared by the measuring tasks and the progress line.
final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A process's CPU time so far (user + system), from /proc/PID/stat.
struct CPUTime {
    let seconds: Double

    init?(pid: Int32?) {
        #if os(Linux)
        guard let pid, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // Fields after "(comm)": state is field 3; utime and stime are 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        seconds = (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
        #else
        return nil
        #endif
    }
}

struct BenchResult {
    let mode: String
    let connections: Int
    let size: Int
    let seconds: Double
    let operations: Int
    let histogram: Histogram<UInt64>?
    let serverCPUSeconds: Double?
    let bytes: Int?

    var perSecond: Double { Double(operations) / seconds }
    var megabytesPerSecond: Double? { bytes.map { Double($0) / seconds / 1e6 } }
    /// Server CPU per operation, in microseconds (per round trip, or per write-sized chunk).
    var serverCPUMicroseconds: Double? { serverCPUSeconds.map { $0 / Double(max(operations, 1)) * 1e6 } }

    private func percentile(_ value: Double) -> Double? {
        histogram.map { Double($0.valueAtPercentile(value)) / 1000 }
    }

    var text: String {
        var lines: [String] = []
        if let megabytesPerSecond {
            lines.append(String(format: "stream: %d bytes in %.3f s: %.1f MB/s", bytes ?? 0, seconds, megabytesPerSecond))
        } else {
            lines.append(String(
                format: "ping-pong: %d connections, %d-byte messages: %d round trips in %.1f s: %.0f round trips/s",
                connections, size, operations, seconds, perSecond))
            if let p50 = percentile(50), let p99 = percentile(99), let p999 = percentile(99.9) {
                lines.append(String(format: "latency: p50 %.1f µs, p99 %.1f µs, p99.9 %.1f µs", p50, p99, p999))
            }
        }
        if let cpu = serverCPUMicroseconds {
            lines.append(String(format: "server CPU: %.2f µs per %@", cpu, histogram == nil ? "write" : "round trip"))
        }
        return lines.joined(separator: "\n")
    }

    var json: String {
        var fields: [String] = [
            "\"mode\": \"\(mode)\"", "\"connections\": \(connections)", "\"size\": \(size)",
            String(format: "\"seconds\": %.3f", seconds), "\"operations\": \(operations)",
            String(format: "\"operations_per_second\": %.1f", perSecond),
        ]
        if let megabytesPerSecond { fields.append(String(format: "\"megabytes_per_second\": %.1f", megabytesPerSecond)) }
        if let p50 = percentile(50), let p99 = percentile(99), let p999 = percentile(99.9) {
            fields.append(String(format: "\"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f", p50, p99, p999))
        }
        if let cpu = serverCPUMicroseconds { fields.append(String(format: "\"server_cpu_us_per_op\": %.3f", cpu)) }
        return "{" + fields.joined(separator: ", ") + "}"
    }
}
