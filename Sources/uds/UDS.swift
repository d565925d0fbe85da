import ArgumentParser

@main
struct UDS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uds",
        abstract: "Unix domain socket tools: the classic echo server and client, and more.",
        discussion: """
            Addresses are filesystem paths, or on Linux abstract names written @name;
            connect, listen, relay and probe also take unix:PATH and tcp:HOST:PORT.
            In a path or name, \\\\ is a backslash and \\xNN the byte NN (two hex digits).
            Errors are one line on standard error, naming the operation and the address;
            the exit status is then 1 (64 for bad command-line usage). uds probe answers
            with its exit status: see uds help probe.
            """,
        subcommands: [EchoServer.self, EchoClient.self, SendDescriptors.self, ReceiveDescriptors.self,
            Connect.self, Listen.self, Send.self, Receive.self, Relay.self, List.self, Probe.self, Stat.self, Bench.self]
    )
}
