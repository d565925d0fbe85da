import CUDSKit

enum CurrentTask {
    /// The task running on this thread, by address (0 outside a task), from
    /// the runtime directly (see `cudskit_current_task`): the optional task
    /// of `withUnsafeCurrentTask` costs a generic call and a retain and a
    /// release, about 100 instructions per socket wait.
    @inline(__always)
    static var address: UInt { UInt(bitPattern: cudskit_current_task()) }
}
