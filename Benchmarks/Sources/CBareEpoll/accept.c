#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include "CBareEpoll.h"

#ifdef __linux__
int bare_accept(int listener) { return accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }
#endif
