import ArgumentParser
import UDSKit

// `uds ls --all`: every Unix socket in the kernel's table, as `ss -xp` shows them.

extension List {
    static let fileStates = ["listening", "stale", "no-permission", "unknown"]
    static let tableStates = ["listening", "connected", "unconnected", "connecting", "disconnecting"]

    struct SocketRow: Encodable {
        var type: String?
        var state: String
        var address: String?
        var addressKind: String
        var inode: UInt64
        var peer: UInt64?
        var peerAddress: String?
        var receiveQueue: UInt32?
        var sendQueue: UInt32?
        var fileDevice: UInt64?
        var fileInode: UInt64?
        var processes: [ProcessInfoRow]

        enum CodingKeys: String, CodingKey {
            case type, state, address, addressKind, inode, peer, peerAddress
            case receiveQueue, sendQueue, fileDevice, fileInode, processes
        }

        /// Every field, null when unknown: a consumer can tell "none" from "not asked".
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(type, forKey: .type)
            try container.encode(state, forKey: .state)
            try container.encode(address, forKey: .address)
            try container.encode(addressKind, forKey: .addressKind)
            try container.encode(inode, forKey: .inode)
            try container.encode(peer, forKey: .peer)
            try container.encode(peerAddress, forKey: .peerAddress)
            try container.encode(receiveQueue, forKey: .receiveQueue)
            try container.encode(sendQueue, forKey: .sendQueue)
            try container.encode(fileDevice, forKey: .fileDevice)
            try container.encode(fileInode, forKey: .fileInode)
            try container.encode(processes, forKey: .processes)
        }
    }

    func printAll() throws {
        let table: [UnixSocketEntry]
        do {
            table = try UnixSocketTable.entries()
        } catch {
            report(error)
            throw ExitCode.failure
        }
        let byInode = Dictionary(table.map { ($0.socketInode, $0) }, uniquingKeysWith: { first, _ in first })
        let rows = table
            .filter { state == nil || $0.state.rawValue == state }
            .sorted { ($0.address.kind == .unnamed ? 1 : 0, $0.address.description, $0.socketInode)
                < ($1.address.kind == .unnamed ? 1 : 0, $1.address.description, $1.socketInode) }
            .map { entry in
                let peer = entry.peerInode.flatMap { byInode[$0] }
                return SocketRow(
                    type: entry.type?.description, state: entry.state.rawValue,
                    address: entry.address.kind == .unnamed ? nil : entry.address.description,
                    addressKind: Self.kindName(entry.address.kind), inode: entry.socketInode,
                    peer: entry.peerInode,
                    peerAddress: peer.flatMap { $0.address.kind == .unnamed ? nil : $0.address.description },
                    receiveQueue: entry.receiveQueue, sendQueue: entry.sendQueue,
                    fileDevice: entry.fileDevice, fileInode: entry.fileInode,
                    processes: entry.processes.map { ProcessInfoRow(pid: $0.processID, command: $0.command) })
            }
        if json { return printJSON(rows) }
        printTable(
            ["TYPE", "STATE", "RECV-Q", "SEND-Q", "INODE", "PEER", "PROCESS", "ADDRESS"],
            rows.map { row in
                let peer = row.peer.map { inode in String(inode) + (row.peerAddress.map { " (\($0))" } ?? "") }
                return [row.type ?? "?", row.state, row.receiveQueue.map(String.init) ?? "-",
                        row.sendQueue.map(String.init) ?? "-", String(row.inode), peer ?? "-",
                        processText(row.processes), row.address ?? "*"]
            })
    }

    private static func kindName(_ kind: UnixAddress.Kind) -> String {
        switch kind {
        case .path: "path"
        case .abstract: "abstract"
        case .unnamed: "unnamed"
        }
    }
}
