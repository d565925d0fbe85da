// What the bare async echo server needs from Linux that Glibc's module leaves out.
#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>

/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC (a GNU extension Glibc's module hides).
int bare_accept(int listener);
#endif
