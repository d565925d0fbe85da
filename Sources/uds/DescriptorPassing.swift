import ArgumentParser
import SystemPackage
import UDSKit

struct SendDescriptors: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send-fd",
        abstract: "Open files and hand their descriptors to a process listening with recv-fd.",
        discussion: """
            Each FILE is opened read-only here; the receiving process gets a descriptor
            for the same open file (SCM_RIGHTS) and can read it even if it could not
            open the path itself. The file names travel along as the message's data.

            Examples:
              uds recv-fd /tmp/fd.sock &
              uds send-fd /tmp/fd.sock /etc/hostname
            """
    )

    @Argument(help: "The socket where recv-fd listens.")
    var address: String

    @Argument(help: "Files to open and send (at most 253).")
    var files: [String]

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("name at least one FILE") }
    }

    func run() throws {
        let server = try parseAddress(address)
        var opened: [FileDescriptor] = []
        defer { for descriptor in opened { try? descriptor.close() } }
        for file in files {
            do {
                opened.append(try FileDescriptor.open(FilePath(file), .readOnly, options: [.closeOnExec]))
            } catch {
                Console.standardError.line("uds: open(\(file)): \(error)")
                throw ExitCode.failure
            }
        }
        do {
            let socket = try StreamSocket.connect(to: server)
            defer { try? socket.close() }
            try socket.writeAll(Array(files.joined(separator: "\n").utf8), descriptors: opened)
            Console.standardError.line("uds: sent \(opened.count) descriptor(s) to \(server)")
        } catch {
            report(error)
            throw ExitCode.failure
        }
    }
}

struct ReceiveDescriptors: ParsableCommand, HandlesShutdownSignals {
    static let configuration = CommandConfiguration(
        commandName: "recv-fd",
        abstract: "Wait for send-fd, receive its descriptors, and copy each file to standard output.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds recv-fd <address> [--allow-uid <uid>] [--allow-gid <gid>] [options]",
        discussion: """
            Listens at PATH (with the same safe-bind rules as echo-server), accepts one
            connection, and receives the descriptors sent with its first message. The
            sender's credentials and the file names are reported on standard error.

            Example:
              uds recv-fd /tmp/fd.sock > copy.txt &
              uds send-fd /tmp/fd.sock notes.txt
            """
    )

    @Argument(help: "The socket path to listen on, or @name.")
    var address: String

    @OptionGroup(title: "Access and activation")
    var serving: ServingOptions

    func run() throws {
        let address = try parseAddress(address)
        do {
            let policy = serving.accessPolicy
            let logger = serving.logger
            let passed = try serving.passedSocket(logger: logger)
            if let passed, passed.type != "stream" || !passed.isListening {
                Console.standardError.line("uds: recv-fd: the activated socket is not a listening stream socket")
                throw ExitCode(64)
            }
            let listener = try ServingOptions.adopt(
                passed, { (descriptor) throws(SocketError) in try StreamListener(adopting: descriptor, admitting: policy, logger: logger) },
                orBind: { () throws(SocketError) in try StreamListener.bind(to: address, options: BindOptions(logger: logger), admitting: policy) })
            if let passed { Console.standardError.line("uds: listening on \(ServingOptions.startupName(of: passed))") }
            exitOnShutdownSignals { try? listener.close() }
            defer { try? listener.close() }
            let (connection, _) = try listener.accept()
            defer { try? connection.close() }
            let sender = try connection.peerCredentials()
            var names: [UInt8] = []
            var descriptors: [ReceivedDescriptor] = []
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
            defer { buffer.deallocate() }
            // The names may span several reads; the descriptors ride on the first.
            while true {
                let (message, arrived) = try connection.receiveWithDescriptors(into: buffer)
                let count = message.count
                descriptors += arrived
                if count == 0 { break }
                names += buffer[..<count]
            }
            let fileNames = String(decoding: names, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            Console.standardError.line("uds: received \(descriptors.count) descriptor(s) from \(sender)")
            for (index, descriptor) in descriptors.enumerated() {
                let name = index < fileNames.count ? String(fileNames[index]) : "descriptor \(index)"
                guard let file = descriptor.take() else { continue }
                defer { try? file.close() }
                Console.standardError.line("uds: \(name):")
                try copyToStandardOutput(file, name: name)
            }
        } catch let error as SocketError {
            yieldToShutdown()
            report(error)
            throw ExitCode.failure
        }
    }

    private func copyToStandardOutput(_ file: FileDescriptor, name: String) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let count: Int
            do {
                count = try file.read(into: buffer)
            } catch {
                Console.standardError.line("uds: read(\(name)): \(error)")
                throw ExitCode.failure
            }
            if count == 0 { return }
            try FileDescriptor.standardOutput.writeAll(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
        }
    }
}
