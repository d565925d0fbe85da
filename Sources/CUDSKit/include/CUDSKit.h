#ifndef CUDSKIT_H
#define CUDSKIT_H

// What Swift cannot import: function-like macros (CMSG_*), the errno
// location, which glibc and Darwin spell differently, the variadic
// syscall(), and the concurrency runtime's current-task entry point, which
// Swift code may not name.

#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>

struct cmsghdr *cudskit_cmsg_firsthdr(const struct msghdr *message);
struct cmsghdr *cudskit_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header);
unsigned char *cudskit_cmsg_data(struct cmsghdr *header);
size_t cudskit_cmsg_len(size_t payload);
size_t cudskit_cmsg_space(size_t payload);

// The peer of a connected socket: Linux SO_PEERCRED; Darwin getpeereid and
// LOCAL_PEERPID. `*pid` is -1 where the platform cannot tell. Returns 0 or -1
// with errno set.
int cudskit_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

// Control-message constants that glibc hides behind _GNU_SOURCE; 0 where the
// platform lacks them.
extern const int cudskit_scm_rights;
extern const int cudskit_scm_credentials;
extern const int cudskit_so_passcred;
extern const int cudskit_msg_cmsg_cloexec;

// Reads the pid/uid/gid of an SCM_CREDENTIALS payload (Linux `struct ucred`).
void cudskit_read_ucred(const void *data, pid_t *pid, uid_t *uid, gid_t *gid);
size_t cudskit_ucred_size(void);

// The peer's supplementary groups (Linux SO_PEERGROUPS): how many were
// written; -1 with errno; or, when `capacity` is too small, -(needed) - 2.
int cudskit_peer_groups(int fd, gid_t *groups, int capacity);
// The peer's security label (Linux SO_PEERSEC), not NUL-terminated: its length,
// or -1 with errno (ENOPROTOOPT without a security module).
int cudskit_peer_security_label(int fd, char *label, int capacity);
// A pidfd for the peer process (Linux SO_PEERPIDFD, 6.5+), close-on-exec, or -1.
int cudskit_peer_pidfd(int fd);
// 1 if the process a pidfd refers to still runs (pidfd_send_signal with 0).
int cudskit_pidfd_is_alive(int pidfd);

// The task running on this thread, or NULL, from the concurrency runtime's
// exported entry point (the one withUnsafeCurrentTask calls). That function is
// generic, not inlinable, and retains and releases the task around its
// closure (about 100 instructions per socket wait); Swift code may not name
// the runtime's symbols itself, so the call is declared here.
extern void *swift_task_getCurrent(void) __attribute__((swiftcall));
static inline const void *cudskit_current_task(void) { return swift_task_getCurrent(); }

// Installs a handler for each of `signals` that sends the signal's number,
// as one byte, over a stream socket pair; returns the pair's read end
// (blocking, close-on-exec), or -1 with errno set. For programs (the CLI),
// never the library: it does not change signal dispositions.
int cudskit_forward_signals(const int *signals, int count);

#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>

// accept4 needs _GNU_SOURCE, which the Glibc module is not built with.
int cudskit_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

// recv and send as the bare system calls. The C library's are cancellation
// points, and in a process with threads each call switches asynchronous
// cancellation on and off around the system call, about 60 instructions
// that no caller here needs (UDSKit never cancels a thread). Return and
// errno as recv and send.
ssize_t cudskit_recv(int fd, void *buffer, size_t length, int flags);
ssize_t cudskit_send(int fd, const void *buffer, size_t length, int flags);
#endif

#endif
