import SystemPackage

/// What `lstat` says about a file: its type, mode, owner, size and identity.
/// The file itself, never what a symbolic link points to.
///
///     let status = try FileStatus(path: "./uds_socket")
///     print(status.modeString)       // srwxr-xr-x
public struct FileStatus: Hashable, Sendable {
    /// Regular file, directory, socket, and so on.
    public var type: FileType
    /// The permission bits, with set-user-ID, set-group-ID and sticky.
    public var permissions: FilePermissions
    /// The owner's user ID.
    public var userID: UInt32
    /// The owning group's ID.
    public var groupID: UInt32
    /// The size in bytes (0 for a socket).
    public var size: Int64
    /// The number of hard links.
    public var linkCount: UInt64
    /// The device the file is on; with ``inode``, the file's identity.
    public var device: UInt64
    /// The inode number on ``device``.
    public var inode: UInt64

    /// A status from its fields; for tests, and for a status read another way.
    public init(
        type: FileType, permissions: FilePermissions, userID: UInt32, groupID: UInt32,
        size: Int64, linkCount: UInt64, device: UInt64, inode: UInt64
    ) {
        self.type = type
        self.permissions = permissions
        self.userID = userID
        self.groupID = groupID
        self.size = size
        self.linkCount = linkCount
        self.device = device
        self.inode = inode
    }

    /// The status of the file at `path`.
    ///
    /// The corresponding C function is `lstat`.
    /// - Throws: ``SocketError`` with operation `stat`, naming the path.
    public init(path: String) throws(SocketError) {
        try self.init(pathBytes: Array(path.utf8))
    }

    /// The status of the file at `pathBytes` (paths need not be UTF-8).
    public init(pathBytes: [UInt8]) throws(SocketError) {
        switch Sys.fileStatus(path: pathBytes) {
        case .success(let status): self = FileStatus(status)
        case .failure(let errno):
            throw SocketError("stat", address: String(decoding: pathBytes, as: UTF8.self), errno: errno)
        }
    }

    /// The mode as `ls -l` prints it: `srwxr-x---`, `-rwsr-xr-x`, `drwxrwxrwt`.
    public var modeString: String {
        let bits = permissions.rawValue
        func triple(_ read: CModeT, _ write: CModeT, _ execute: CModeT, special: CModeT, set: Character, unset: Character) -> String {
            var text = ""
            text.append(bits & read != 0 ? "r" : "-")
            text.append(bits & write != 0 ? "w" : "-")
            switch (bits & execute != 0, bits & special != 0) {
            case (true, true): text.append(set)
            case (false, true): text.append(unset)
            case (true, false): text.append("x")
            case (false, false): text.append("-")
            }
            return text
        }
        return String(type.letter)
            + triple(0o400, 0o200, 0o100, special: 0o4000, set: "s", unset: "S")
            + triple(0o040, 0o020, 0o010, special: 0o2000, set: "s", unset: "S")
            + triple(0o004, 0o002, 0o001, special: 0o1000, set: "t", unset: "T")
    }

    /// The permission bits in octal, as chmod takes them: `0755`.
    public var octalMode: String {
        let digits = String(permissions.rawValue & 0o7777, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
