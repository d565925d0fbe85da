import Synchronization
import SystemPackage

/// A file descriptor that arrived over a Unix socket (`SCM_RIGHTS`).
///
/// It is owned: it closes itself when the last reference goes away unless it
/// was taken with ``take()``, so ignoring received descriptors leaks nothing.
/// It is close-on-exec from the moment it arrives (`MSG_CMSG_CLOEXEC` on Linux).
public final class ReceivedDescriptor: Sendable, CustomStringConvertible {
    /// The descriptor, or -1 once taken or closed.
    private let value: Atomic<CInt>

    init(_ descriptor: CInt) {
        value = Atomic(descriptor)
    }

    deinit {
        let descriptor = value.load(ordering: .relaxed)
        if descriptor >= 0 { _ = Sys.close(descriptor) }
    }

    /// The descriptor number while still owned here, for a quick look; -1 once
    /// taken or closed. Do not close it: use ``close()`` or ``take()``.
    public var rawValue: CInt { value.load(ordering: .acquiring) }

    /// Takes ownership: the caller must close the descriptor. Returns `nil` if
    /// it was already taken or closed.
    public func take() -> FileDescriptor? {
        let descriptor = value.exchange(-1, ordering: .acquiringAndReleasing)
        return descriptor >= 0 ? FileDescriptor(rawValue: descriptor) : nil
    }

    /// Closes the descriptor now, unless it was taken; later calls do nothing.
    public func close() {
        let descriptor = value.exchange(-1, ordering: .acquiringAndReleasing)
        if descriptor >= 0 { _ = Sys.close(descriptor) }
    }

    /// `ReceivedDescriptor(7)`; `-1` once taken or closed.
    public var description: String { "ReceivedDescriptor(\(rawValue))" }
}
