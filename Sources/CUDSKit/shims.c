#ifdef __linux__
#define _GNU_SOURCE
#endif
#include "CUDSKit.h"

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
#endif
