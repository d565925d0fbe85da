import ArgumentParser

@main
struct UDS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uds",
        abstract: "Unix domain socket tools: the classic echo server and client, and more.",
        discussion: """
            Addresses are filesystem paths, or on Linux abstract names written @name.
            Errors are one line on standard error, naming the operation and the address;
            the exit status is then 1 (64 for bad command-line usage).
            """,
        subcommands: [EchoServer.self, EchoClient.self, SendDescriptors.self, ReceiveDescriptors.self, Bench.self]
    )
}
