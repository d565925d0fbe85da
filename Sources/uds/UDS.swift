import ArgumentParser
import Foundation

@main
struct UDS: AsyncParsableCommand {
    /// The release `uds --version` prints.
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "uds",
        abstract: "Unix domain socket tools: the classic echo server and client, and more.",
        discussion: """
            Addresses are filesystem paths, or on Linux abstract names written @name;
            connect, listen, relay and probe also take unix:PATH and tcp:HOST:PORT.
            In a path or name, \\\\ is a backslash and \\xNN the byte NN (two hex digits).

            Durations are seconds (2, 1.5) or numbers with units, largest first:
            500ms, 2s, 1m30s, 1h.

            Errors are one line on standard error, naming the operation and the
            address; the exit status is then 1 (64 for bad command-line usage).
            uds probe answers with its exit status: see uds help probe.

            SIGINT and SIGTERM stop any command: it closes its sockets, removes the
            socket files it created, and exits 0, since being stopped is how a
            server ends (a service manager counts 0 as a clean stop).
            """,
        version: version,
        subcommands: [EchoServer.self, EchoClient.self, SendDescriptors.self, ReceiveDescriptors.self,
            Connect.self, Listen.self, Send.self, Receive.self, Relay.self, List.self, Probe.self, Stat.self, Bench.self]
    )

    /// The argument parser's own main, except that a usage error is one line,
    /// `uds: recv: Unknown option '--bogus'`, as every other error is; help
    /// and `--version` print as usual.
    nonisolated static func main() async {
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            exitReporting(error)
        }
        // A command that never arranges its own shutdown still follows the
        // rule above: a signal ends it with 0, not the default action's death.
        if type(of: command) is any HandlesShutdownSignals.Type {
            // Held until the command installs its action, which removes what
            // it bound.
            ShutdownSignals.prepare()
        } else {
            ShutdownSignals.install { _ in Foundation.exit(0) }
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var command = command
                try command.run()
            }
        } catch {
            if ShutdownSignals.received.load(ordering: .acquiring) {
                // The failure is the shutdown closing a socket under a call.
                // Two threads must not run exit() at once (AddressSanitizer
                // saw a double free): give the signal's action, which may be
                // exiting, time to finish, then exit as the rule says.
                try? await Task.sleep(for: .seconds(5))
                ShutdownSignals.exitProcess(0)
            }
            exitReporting(error)
        }
        ShutdownSignals.exitProcess(0)
    }

    private static func exitReporting(_ error: any Error) -> Never {
        let code = exitCode(for: error)
        let text = fullMessage(for: error)
        // Help and --version go to standard output, a thrown ExitCode has
        // already said why; only the parser's own errors are rewritten.
        guard code == .validationFailure, !text.isEmpty, !(error is ExitCode) else { exit(withError: error) }
        let message = self.message(for: error)
        let command = CommandLine.arguments.dropFirst().first { name in
            configuration.subcommands.contains { $0.configuration.commandName == name }
        }
        let prefix = command.map { "uds: \($0): " } ?? "uds: "
        let help = command.map { " (see uds help \($0))" } ?? " (see uds help)"
        Console.standardError.line(prefix + message.split(separator: "\n").joined(separator: " ") + help)
        Foundation.exit(code.rawValue)
    }
}

/// A command that installs its own SIGINT/SIGTERM action (see
/// ``ShutdownSignals``), which closes what it opened before exiting 0.
protocol HandlesShutdownSignals {}
