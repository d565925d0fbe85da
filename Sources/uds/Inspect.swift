#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ArgumentParser
import Foundation
import UDSKit

// `uds ls`, `uds probe` and `uds stat`: what is at a path, who listens there.

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List socket files with their mode, owner, type, state and listening process.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds ls [<directory>] [--all | --abstract] [-r] [options]",
        discussion: """
            Lists the socket files in DIR (default: the current directory; a socket file
            names just itself), one line each:

              MODE        OWNER GROUP TYPE   STATE         PROCESS       PATH
              srwxr-xr-x  me    me    stream listening     4242/python3  ./app.sock
              srw-------  me    me    -      stale         -             ./old.sock

            STATE is listening (something holds the socket: a listener, or a bound datagram
            socket), stale (a socket file nobody is bound to, left by a process that exited;
            binding there replaces it), or no permission (this user may not connect). The
            check is a datagram connect, which no server sees.

            On Linux TYPE and PROCESS (pid/command, every process holding the socket) come
            from the kernel's socket table (NETLINK_SOCK_DIAG, else /proc/net/unix) and
            /proc/*/fd; processes of other users show only to root. --abstract lists the
            abstract sockets (@name) instead, which have no file; unlike ss, a socket file
            whose name starts with @ is never mistaken for one (with NETLINK_SOCK_DIAG;
            /proc/net/unix cannot tell them apart).

            --json prints an array of objects instead: path, mode, permissions, owner,
            group, uid, gid, type, state, and processes ([{pid, command}]); for --abstract,
            name, type, state and processes.

            --all lists every Unix socket on the system instead, as ss -xp does (Linux):
            named or not, listening or connected, with Recv-Q and Send-Q (for a listener,
            connections waiting for accept, and the backlog), its inode, its peer's inode
            and the processes; --json keeps every field. -r lists DIR's subdirectories too
            (symbolic links are not followed). --state keeps only rows in that state:
            listening, stale or no-permission for files; listening, connected,
            unconnected, connecting or disconnecting with --all or --abstract.

            Exit status: 0, or 1 if DIR cannot be read.

            Examples:
              uds ls /run
              uds ls --abstract
              uds ls --all --state connected
              uds ls -r /run
              uds ls /tmp --json | jq '.[] | select(.state == "stale") | .path'
            """
    )

    @Argument(help: "The directory to list (default: the current directory).")
    var directory: String = "."

    @Flag(help: "List the abstract sockets (@name) instead (Linux).")
    var abstract = false

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @Flag(help: "Every Unix socket on the system, like ss -xp (Linux).")
    var all = false

    @Flag(name: [.short, .customLong("recursive")], help: "Also list the sockets in DIR's subdirectories.")
    var recursive = false

    @Option(help: "Only the rows in this state, e.g. listening or stale.")
    var state: String?

    func validate() throws {
        if all && abstract { throw ValidationError("--all already includes the abstract sockets") }
        if let state {
            let states = all || abstract ? Self.tableStates : Self.fileStates
            guard states.contains(state) else {
                throw ValidationError("--state \(state): use one of \(states.joined(separator: ", "))")
            }
        }
    }

    func run() throws {
        if all { return try printAll() }
        var table: [UnixSocketEntry]?
        do {
            table = try UnixSocketTable.entries()
        } catch {
            if abstract {
                report(error)
                throw ExitCode.failure
            }
            // Files and their states can still be listed; TYPE and PROCESS
            // stay unknown. Only on Linux is a missing table worth a word.
            #if os(Linux)
            report(error)
            #endif
        }
        if abstract {
            printAbstract(table ?? [])
        } else {
            try printFiles(table)
        }
    }

    struct FileRow: Encodable {
        var path: String
        var mode: String
        var permissions: String
        var owner: String
        var group: String
        var uid: UInt32
        var gid: UInt32
        var type: String?
        var state: String
        var processes: [ProcessInfoRow]
    }

    struct AbstractRow: Encodable {
        var name: String
        var type: String?
        var state: String
        var processes: [ProcessInfoRow]
    }

    struct ProcessInfoRow: Encodable {
        var pid: Int32
        var command: String
    }

    private func printFiles(_ table: [UnixSocketEntry]?) throws {
        let status: FileStatus
        do {
            status = try FileStatus(path: directory)
        } catch {
            report(error)
            throw ExitCode.failure
        }
        var paths: [String]
        if status.type == .directory {
            paths = try socketCandidates(in: directory)
        } else {
            paths = [directory]
        }
        var rows: [FileRow] = []
        for path in paths {
            guard let file = try? FileStatus(path: path), file.type == .socket else { continue }
            let state: String
            var type: String?
            switch (try? UnixAddress(path: path)).flatMap({ try? SocketFileStatus.probe($0) }) {
            case .listening(let probed, _)?:
                state = "listening"
                type = probed?.description
            case .stale?: state = "stale"
            case .noPermission?: state = "no permission"
            case .absent?: continue  // Removed meanwhile.
            case .notASocket?: continue
            case nil: state = "unknown"
            }
            if let wanted = self.state, wanted != state.replacingOccurrences(of: " ", with: "-") { continue }
            let holders = table?.filter { $0.isBound(to: file) && $0.holdsAddress } ?? []
            if let known = holders.lazy.compactMap(\.type).first { type = known.description }
            let processes = Array(Set(holders.flatMap(\.processes))).sorted { $0.processID < $1.processID }
            rows.append(FileRow(
                path: path, mode: file.modeString, permissions: file.octalMode,
                owner: userName(file.userID), group: groupName(file.groupID), uid: file.userID, gid: file.groupID,
                type: state == "stale" ? nil : type, state: state,
                processes: processes.map { ProcessInfoRow(pid: $0.processID, command: $0.command) }))
        }
        if json { return printJSON(rows) }
        printTable(
            ["MODE", "OWNER", "GROUP", "TYPE", "STATE", "PROCESS", "PATH"],
            rows.map { row in
                [row.mode, row.owner, row.group, row.type ?? "-", row.state, processText(row.processes), row.path]
            })
    }

    private func printAbstract(_ table: [UnixSocketEntry]) {
        var seen: Set<UInt64> = []
        var rows: [AbstractRow] = []
        let named = table.filter { $0.address.kind == .abstract && $0.holdsAddress }
        for entry in named.sorted(by: { $0.address.description < $1.address.description })
        where seen.insert(entry.socketInode).inserted && (self.state == nil || self.state == entry.state.rawValue) {
            let state = entry.state == .listening || entry.type == .datagram ? "listening" : "bound"
            rows.append(AbstractRow(
                name: entry.address.description, type: entry.type?.description, state: state,
                processes: entry.processes.map { ProcessInfoRow(pid: $0.processID, command: $0.command) }))
        }
        if json { return printJSON(rows) }
        printTable(
            ["TYPE", "STATE", "PROCESS", "NAME"],
            rows.map { [$0.type ?? "?", $0.state, processText($0.processes), $0.name] })
    }

    func processText(_ processes: [ProcessInfoRow]) -> String {
        processes.isEmpty ? "-" : processes.map { "\($0.pid)/\($0.command)" }.joined(separator: ",")
    }

    /// The paths in `path` (with -r, in its subdirectories too, without
    /// following symbolic links), sorted.
    private func socketCandidates(in path: String) throws -> [String] {
        var paths: [String] = []
        for name in try directoryEntries(path).sorted() {
            let child = path.hasSuffix("/") ? path + name : path + "/" + name
            if recursive, let status = try? FileStatus(path: child), status.type == .directory {
                // A subdirectory that cannot be read is reported and skipped, as find does.
                paths += (try? socketCandidates(in: child)) ?? []
            } else {
                paths.append(child)
            }
        }
        return paths
    }

    /// The names in `path`, or a one-line error.
    func directoryEntries(_ path: String) throws -> [String] {
        guard let handle = opendir(path) else {
            report(SocketError("opendir", address: path, code: .system(.init(rawValue: errno))))
            throw ExitCode.failure
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// The exit statuses of `uds probe`, one per answer.
enum ProbeExit: Int32 {
    case listening = 0
    case error = 1
    case stale = 2
    case notASocket = 3
    case noPermission = 4
    case nothing = 5
}

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Tell whether something listens at an address, and who; the answer is also the exit status.",
        // Short enough for 80 columns; OPTIONS lists the rest.
        usage: "uds probe <address> [--json] [--quiet] [options]",
        discussion: """
            Prints one line and exits with a status that says what is at ADDRESS:

              0  listening: a server holds the socket (for a stream or seqpacket listener,
                 with its type and the pid, uid, gid and command of the process that
                 called listen)
              1  error: the probe itself failed (a one-line message says why)
              2  stale: a socket file nobody is bound to, left by a process that exited
              3  not a socket: the path is another kind of file (its type is named)
              4  no permission: this user may not connect (the socket file's mode, or a
                 directory on the way)
              5  nothing there: no file at the path, no socket bound to the @name, or for
                 TCP, the connection was refused
             64  bad command-line usage

            The check is a datagram connect, which no server sees. To learn a stream or
            seqpacket listener's type and credentials, uds then connects for real and
            closes at once, so that server accepts a connection that sends nothing (an
            echo server logs an empty session). --no-identify skips that step.

            For tcp:HOST:PORT, probe connects (at most --timeout, default 5s) and closes.

            Examples:
              uds probe ./uds_socket
              uds probe @my-service --json
              if uds probe /run/app.sock --quiet; then echo up; fi
              uds probe tcp:127.0.0.1:8080
            """
    )

    @Argument(help: "The socket: PATH, @name, unix:PATH or tcp:HOST:PORT.")
    var address: String

    @Flag(help: "Do not connect to a listener to learn its socket type and its credentials.")
    var noIdentify = false

    @Flag(help: "Print JSON: address, state, and when known type, pid, uid, gid, command.")
    var json = false

    @Flag(help: "Print nothing; the exit status is the answer.")
    var quiet = false

    @Option(parsing: .unconditional, help: "TCP: how long to wait for the connection: a duration, \(OptionRange.seconds.help).")
    var timeout: DurationOption?

    struct Answer: Encodable {
        var address: String
        var state: String
        var type: String?
        var fileType: String?
        var pid: Int32?
        var uid: UInt32?
        var gid: UInt32?
        var command: String?
    }

    func validate() throws {
        try OptionRange.seconds.check("--timeout", timeout)
    }

    func run() throws {
        let endpoint = try parseEndpoint(address)
        let shown = endpoint.description
        var answer = Answer(address: shown, state: "")
        let exit: ProbeExit
        var detail = ""
        switch endpoint.kind {
        case .tcp:
            do {
                let connection = try StreamSocket.connect(to: endpoint, timeout: timeout?.duration ?? .seconds(5))
                try? connection.close()
                (answer.state, answer.type, exit) = ("listening", "tcp", .listening)
                detail = "listening (tcp)"
            } catch where error.errno == .connectionRefused {
                (answer.state, exit) = ("nothing", .nothing)
                detail = "nothing there (connection refused)"
            } catch {
                report(error)
                throw ExitCode(ProbeExit.error.rawValue)
            }
        case .unix(let unix):
            let status: SocketFileStatus
            do {
                status = try SocketFileStatus.probe(unix, identifying: !noIdentify)
            } catch {
                report(error)
                throw ExitCode(ProbeExit.error.rawValue)
            }
            switch status {
            case .listening(let type, let credentials):
                (answer.state, answer.type, exit) = ("listening", type?.description, .listening)
                detail = "listening" + (type.map { " (\($0))" } ?? "")
                if let credentials {
                    answer.pid = credentials.processID
                    answer.uid = credentials.userID
                    answer.gid = credentials.groupID
                    answer.command = credentials.processID.flatMap(commandName)
                    detail += " " + describeCredentials(credentials)
                }
            case .stale:
                (answer.state, exit) = ("stale", .stale)
                detail = "stale socket file: nobody is listening (binding there replaces it)"
            case .notASocket(let type):
                (answer.state, answer.fileType, exit) = ("not a socket", type.name, .notASocket)
                detail = "not a socket: a \(type.name)"
            case .noPermission:
                (answer.state, exit) = ("no permission", .noPermission)
                detail = "no permission to connect"
            case .absent:
                (answer.state, exit) = ("nothing", .nothing)
                detail = unix.kind == .abstract ? "nothing there: no socket has this name" : "nothing there: no such file"
            }
        }
        if json {
            printJSON(answer)
        } else if !quiet {
            Console.standardOutput.line("\(shown): \(detail)")
        }
        if exit != .listening { throw ExitCode(exit.rawValue) }
    }
}

struct Stat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stat",
        abstract: "Show a file's type (with its ls -l letter), mode, owner, size and inode.",
        discussion: """
            The file itself is described, not what a symbolic link points to. Types and
            their letters: - regular file, d directory, l symbolic link, c character
            device, b block device, s socket, p named pipe (FIFO).

            Exit status: 0, or 1 if the file cannot be examined (one line says why).

            Examples:
              uds stat ./uds_socket
              uds stat /run/app.sock --json
            """
    )

    @Argument(help: "The file to describe.")
    var path: String

    @Flag(help: "Print JSON: path, type, letter, mode, permissions, uid, gid, owner, group, size, inode, device, links.")
    var json = false

    struct Answer: Encodable {
        var path: String
        var type: String
        var letter: String
        var mode: String
        var permissions: String
        var uid: UInt32
        var gid: UInt32
        var owner: String
        var group: String
        var size: Int64
        var inode: UInt64
        var device: UInt64
        var links: UInt64
    }

    func run() throws {
        let status: FileStatus
        do {
            status = try FileStatus(path: path)
        } catch {
            report(error)
            throw ExitCode.failure
        }
        let answer = Answer(
            path: path, type: status.type.name, letter: String(status.type.letter), mode: status.modeString,
            permissions: status.octalMode, uid: status.userID, gid: status.groupID,
            owner: userName(status.userID), group: groupName(status.groupID),
            size: status.size, inode: status.inode, device: status.device, links: status.linkCount)
        if json { return printJSON(answer) }
        for line in [
            "path: \(answer.path)",
            "type: \(answer.type) (\(answer.letter))",
            "mode: \(answer.mode) (\(answer.permissions))",
            "owner: \(answer.owner) (uid \(answer.uid))",
            "group: \(answer.group) (gid \(answer.gid))",
            "size: \(answer.size)",
            "inode: \(answer.inode)",
            "device: \(answer.device)",
            "links: \(answer.links)",
        ] {
            Console.standardOutput.line(line)
        }
    }
}

// MARK: Output helpers

/// One JSON document on standard output, keys sorted.
func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    guard let data = try? encoder.encode(value) else { return }
    Console.standardOutput.line(String(decoding: data, as: UTF8.self))
}

/// Columns padded to their widest cell, the last one unpadded.
func printTable(_ header: [String], _ rows: [[String]]) {
    let all = [header] + rows
    var widths = [Int](repeating: 0, count: header.count)
    for row in all {
        for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
    }
    for row in all {
        var line = ""
        for (index, cell) in row.enumerated() {
            if index == row.count - 1 {
                line += cell
            } else {
                line += cell + String(repeating: " ", count: widths[index] - cell.count + 2)
            }
        }
        Console.standardOutput.line(line)
    }
}

/// The user name for `uid`, or the number.
func userName(_ uid: UInt32) -> String {
    var entry = passwd()
    var result: UnsafeMutablePointer<passwd>?
    var buffer = [CChar](repeating: 0, count: 4096)
    guard getpwuid_r(uid_t(uid), &entry, &buffer, buffer.count, &result) == 0, result != nil,
        let name = entry.pw_name
    else { return String(uid) }
    return String(cString: name)
}

/// The group name for `gid`, or the number.
func groupName(_ gid: UInt32) -> String {
    var entry = group()
    var result: UnsafeMutablePointer<group>?
    var buffer = [CChar](repeating: 0, count: 4096)
    guard getgrgid_r(gid_t(gid), &entry, &buffer, buffer.count, &result) == 0, result != nil,
        let name = entry.gr_name
    else { return String(gid) }
    return String(cString: name)
}
