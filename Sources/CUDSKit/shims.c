#ifdef __linux__
#define _GNU_SOURCE
#endif
#include "CUDSKit.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif
#ifdef __APPLE__
#include <sys/un.h>
#include <sys/ucred.h>
#endif

struct cmsghdr *cudskit_cmsg_firsthdr(const struct msghdr *message) {
    return CMSG_FIRSTHDR(message);
}

struct cmsghdr *cudskit_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header) {
    return CMSG_NXTHDR(message, header);
}

unsigned char *cudskit_cmsg_data(struct cmsghdr *header) {
    return CMSG_DATA(header);
}

size_t cudskit_cmsg_len(size_t payload) {
    return CMSG_LEN(payload);
}

size_t cudskit_cmsg_space(size_t payload) {
    return CMSG_SPACE(payload);
}

#ifdef __linux__
int cudskit_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(fd, address, length, flags);
}

ssize_t cudskit_recv(int fd, void *buffer, size_t length, int flags) {
#ifdef SYS_recvfrom
    return syscall(SYS_recvfrom, fd, buffer, length, flags, NULL, NULL);
#else
    return recv(fd, buffer, length, flags);
#endif
}

ssize_t cudskit_send(int fd, const void *buffer, size_t length, int flags) {
#ifdef SYS_sendto
    return syscall(SYS_sendto, fd, buffer, length, flags, NULL, 0);
#else
    return send(fd, buffer, length, flags);
#endif
}
#endif

int cudskit_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
#if defined(__linux__)
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
#elif defined(__APPLE__)
    if (getpeereid(fd, uid, gid) != 0) return -1;
    pid_t peer = -1;
    socklen_t length = sizeof(peer);
    if (getsockopt(fd, SOL_LOCAL, LOCAL_PEERPID, &peer, &length) != 0) peer = -1;
    *pid = peer;
    return 0;
#else
    errno = ENOTSUP;
    return -1;
#endif
}

const int cudskit_scm_rights = SCM_RIGHTS;
#if defined(__linux__)
const int cudskit_scm_credentials = SCM_CREDENTIALS;
const int cudskit_so_passcred = SO_PASSCRED;
const int cudskit_msg_cmsg_cloexec = MSG_CMSG_CLOEXEC;

void cudskit_read_ucred(const void *data, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred credentials;
    memcpy(&credentials, data, sizeof(credentials));
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
}

size_t cudskit_ucred_size(void) { return sizeof(struct ucred); }
#else
const int cudskit_scm_credentials = 0;
const int cudskit_so_passcred = 0;
const int cudskit_msg_cmsg_cloexec = 0;

void cudskit_read_ucred(const void *data, pid_t *pid, uid_t *uid, gid_t *gid) {
    (void)data;
    *pid = -1;
    *uid = (uid_t)-1;
    *gid = (gid_t)-1;
}

size_t cudskit_ucred_size(void) { return 0; }
#endif

// Signals as bytes on a socket pair: the handler only sends the signal's
// number, which is async-signal-safe, and a thread of the program's choosing
// (or its event loop, which watches sockets) reads them and does the real
// work. No thread pool is involved, so this works when the process is out of
// descriptors (a pool's monitor may not).
#include <fcntl.h>
#include <signal.h>

static volatile int signal_pipe_write = -1;

static void cudskit_forward_signal(int number) {
    int saved = errno;
    unsigned char byte = (unsigned char)number;
    // Non-blocking: during a storm a full socket drops bytes, never the
    // handler. A closed read end must not raise SIGPIPE.
#if defined(MSG_NOSIGNAL)
    (void)send(signal_pipe_write, &byte, 1, MSG_NOSIGNAL);
#else
    (void)write(signal_pipe_write, &byte, 1);  // SO_NOSIGPIPE is set on it
#endif
    errno = saved;
}

int cudskit_forward_signals(const int *signals, int count) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return -1;
    for (int i = 0; i < 2; i++) {
        if (fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0) goto fail;
    }
    if (fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) != 0) goto fail;
#if !defined(MSG_NOSIGNAL) && defined(SO_NOSIGPIPE)
    int on = 1;
    if (setsockopt(fds[1], SOL_SOCKET, SO_NOSIGPIPE, &on, sizeof on) != 0) goto fail;
#endif
    signal_pipe_write = fds[1];
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = cudskit_forward_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < count; i++) {
        if (sigaction(signals[i], &action, NULL) != 0) return -1;
    }
    return fds[0];
fail:
    close(fds[0]);
    close(fds[1]);
    return -1;
}

// Peer identity beyond SO_PEERCRED (Linux): supplementary groups, the LSM
// label, and a pidfd. Each returns -1 with errno set where the kernel or the
// platform has none (ENOPROTOOPT, ENOTSUP).
#if defined(__linux__)
#include <sys/syscall.h>
#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#endif

int cudskit_peer_groups(int fd, gid_t *groups, int capacity) {
#if defined(__linux__)
    socklen_t length = (socklen_t)(capacity * (int)sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &length) != 0) {
        // Too small: the kernel says how much room it needs.
        if (errno == ERANGE) return -(int)(length / sizeof(gid_t)) - 2;
        return -1;
    }
    return (int)(length / sizeof(gid_t));
#else
    (void)fd; (void)groups; (void)capacity;
    errno = ENOTSUP;
    return -1;
#endif
}

int cudskit_peer_security_label(int fd, char *label, int capacity) {
#if defined(__linux__)
    socklen_t length = (socklen_t)capacity;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERSEC, label, &length) != 0) return -1;
    return (int)length;
#else
    (void)fd; (void)label; (void)capacity;
    errno = ENOTSUP;
    return -1;
#endif
}

int cudskit_peer_pidfd(int fd) {
#if defined(__linux__)
    int pidfd = -1;
    socklen_t length = sizeof(pidfd);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &length) != 0) return -1;
    return pidfd;
#else
    (void)fd;
    errno = ENOTSUP;
    return -1;
#endif
}

int cudskit_pidfd_is_alive(int pidfd) {
#if defined(__linux__) && defined(SYS_pidfd_send_signal)
    return syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0 ? 1 : 0;
#else
    (void)pidfd;
    return 0;
#endif
}
