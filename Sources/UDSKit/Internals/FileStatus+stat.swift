#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import SystemPackage

extension FileStatus {
    init(_ status: stat) {
        self.init(
            type: FileType(mode: status.st_mode),
            permissions: FilePermissions(rawValue: CModeT(status.st_mode & 0o7777)),
            userID: UInt32(status.st_uid),
            groupID: UInt32(status.st_gid),
            size: Int64(status.st_size),
            linkCount: UInt64(status.st_nlink),
            device: UInt64(status.st_dev),
            inode: UInt64(status.st_ino))
    }
}
