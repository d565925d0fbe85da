#ifndef CUDSKIT_H
#define CUDSKIT_H

// What Swift cannot import: function-like macros (CMSG_*) and the errno
// location, which glibc and Darwin spell differently.

#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>

struct cmsghdr *cudskit_cmsg_firsthdr(const struct msghdr *message);
struct cmsghdr *cudskit_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header);
unsigned char *cudskit_cmsg_data(struct cmsghdr *header);
size_t cudskit_cmsg_len(size_t payload);
size_t cudskit_cmsg_space(size_t payload);

#ifdef __linux__
// accept4 needs _GNU_SOURCE, which the Glibc module is not built with.
int cudskit_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);
#endif

#endif
