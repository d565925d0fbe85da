// The reference: a single-threaded, edge-triggered epoll echo server over
// AF_UNIX stream sockets, written as a careful C programmer would. It echoes
// with one read and one write per readiness event while data keeps coming,
// keeps unsent bytes per connection, and honours half-close.
//
//   cc -O2 -o echo_epoll echo_epoll.c && ./echo_epoll /tmp/echo.sock
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { BUFFER_SIZE = 65536, MAX_EVENTS = 256 };

struct connection {
    int fd;
    int peer_closed;        // read returned 0: close once everything is sent
    size_t pending_length;  // bytes read but not yet written back
    size_t pending_offset;
    char *pending;          // allocated only while the peer is slow to read
};

static char buffer[BUFFER_SIZE];
static const char *socket_path;

static void on_signal(int signal_number) {
    (void)signal_number;
    unlink(socket_path);
    _exit(0);
}

static void close_connection(int epoll_fd, struct connection *connection) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, connection->fd, NULL);
    close(connection->fd);
    free(connection->pending);
    free(connection);
}

// Writes what is pending; returns 0 when all is written, 1 if the socket is full, -1 on error.
static int flush_pending(struct connection *connection) {
    while (connection->pending_offset < connection->pending_length) {
        ssize_t written = send(connection->fd, connection->pending + connection->pending_offset,
                               connection->pending_length - connection->pending_offset, MSG_NOSIGNAL);
        if (written < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? 1 : -1;
        }
        connection->pending_offset += (size_t)written;
    }
    free(connection->pending);
    connection->pending = NULL;
    connection->pending_length = connection->pending_offset = 0;
    return 0;
}

// Reads and echoes until the socket would block; returns -1 to close the connection.
static int serve(struct connection *connection) {
    int flushed = flush_pending(connection);
    if (flushed != 0) return flushed < 0 ? -1 : 0;
    if (connection->peer_closed) return -1;
    for (;;) {
        ssize_t count = read(connection->fd, buffer, sizeof buffer);
        if (count < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? 0 : -1;
        }
        if (count == 0) return -1;  // everything read was written back already
        ssize_t written = send(connection->fd, buffer, (size_t)count, MSG_NOSIGNAL);
        if (written < 0) {
            if (errno != EAGAIN && errno != EINTR) return -1;
            written = 0;
        }
        if (written < count) {
            connection->pending_length = (size_t)(count - written);
            connection->pending = malloc(connection->pending_length);
            memcpy(connection->pending, buffer + written, connection->pending_length);
            return 0;  // wait for EPOLLOUT
        }
        if ((size_t)count < sizeof buffer) return 0;  // drained: the next edge says when more arrives
    }
}

int main(int argc, char **argv) {
    socket_path = argc > 1 ? argv[1] : "./echo_epoll.sock";
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    unlink(socket_path);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, socket_path, sizeof address.sun_path - 1);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, SOMAXCONN) != 0) {
        perror("bind/listen");
        return 1;
    }
    int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event);
    fprintf(stderr, "listening on %s\n", socket_path);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(epoll_fd, events, MAX_EVENTS, -1);
        for (int index = 0; index < ready; index++) {
            struct connection *connection = events[index].data.ptr;
            if (connection == NULL) {
                for (;;) {
                    int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    connection = calloc(1, sizeof *connection);
                    connection->fd = fd;
                    struct epoll_event added = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = connection};
                    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &added);
                }
                continue;
            }
            if (serve(connection) < 0) close_connection(epoll_fd, connection);
        }
    }
}
