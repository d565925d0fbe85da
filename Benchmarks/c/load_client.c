// A load client for echo servers: C11 and libc only, so that the client is
// never what limits the measurement. One epoll loop per thread drives many
// connections; every echoed byte is checked.
//
//   cc -O2 -std=c11 -Wall -Wextra -pthread -o load_client load_client.c
//   ./load_client -c 10 -s 100 -d 3 -w 1 -p "$(pidof echo_epoll)" /tmp/echo.sock
//
// Modes (-m):
//   ping-pong   each connection sends -s bytes, waits for the whole echo, checks
//               it and sends the next message; for -d seconds after -w seconds
//               of warm-up. Reports round trips/s and latency percentiles.
//   stream      each connection writes -b bytes in -s-byte writes while reading
//               the echo in the same loop (never blocking either direction).
//               Reports MB/s (10^6 bytes echoed per second, all connections).
//   half-close  stream, then shutdown(SHUT_WR); the connection must echo every
//               byte and then end the stream (read returns 0).
//
// Content: byte k of a window starting at phase f is pattern[f + k], where the
// pattern is random with a period of PERIOD (a prime) bytes. Each connection
// starts at its own phase, and each round trip moves it on by STEP, so an echo
// that went to the wrong connection, came back stale or out of order does not
// match (two connections' windows coincide at 1 in PERIOD pairs of round trips).
// Streams are checked by position the same way.
//
// Latency: every round trip completed in the measured window goes into a
// log-linear histogram (as HdrHistogram does it): exact below 256 ns, and above
// that 128 buckets per power of two, so a bucket is at most 1/128 of its lower
// bound wide. Percentiles are reported as the bucket's midpoint: the error is
// at most 1/256 (0.4%). The maximum is exact.
//
// Server CPU (-p PID): the time each of its threads ran, in nanoseconds, from
// /proc/PID/task/TID/schedstat, summed, at the start and end of the measured
// window, per round trip or per MB echoed (a thread that started meanwhile
// counts whole; if one ended, its time is lost there, and utime + stime from
// /proc/PID/stat, in clock ticks, is used instead: a tick is 10 ms, a
// tenth of a half-close run's CPU, but the process keeps its ended threads'
// ticks). utime alone (the server's own code, whatever the kernel's share)
// comes from /proc/PID/stat. The
// client's own CPU time is reported the same way, so a run shows which side
// was busy. With -B the client never sleeps (epoll_wait with timeout 0); each
// poll that found nothing is then charged at the CPU cost of an empty poll,
// measured at start, and left out of the client's time: that was waiting.
//
// Sockets are edge-triggered. A read that returns less than it had room for
// emptied the socket (Unix and TCP stream reads take everything queued), so it
// is the last read until the next edge: one read per echo, not two.
//
// Output: one JSON line on stdout. Any mismatch, short or extra echo, unexpected
// end of stream, connect or I/O error ends the run with exit status 1 and a
// one-line reason on stderr (also in the JSON as "error").
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum {
    PERIOD = 65521,            // prime, so windows never line up with power-of-two sizes
    STEP = 4099,               // phase advance per round trip; any 0 < STEP < PERIOD cycles fully
    READ_SIZE = 256 * 1024,    // a read buffer larger than any echo expected at once
    MAX_EVENTS = 256,
    SUB_BITS = 7,              // 2^7 = 128 buckets per power of two
    SUB_COUNT = 1 << SUB_BITS,
    VALUE_BITS = 40,           // latencies up to 2^40 ns (18 minutes)
    BUCKETS = (VALUE_BITS - 1 - SUB_BITS + 2) * SUB_COUNT,
};

enum mode { PING_PONG, STREAM, HALF_CLOSE };
static const char *const mode_names[] = {"ping-pong", "stream", "half-close"};

struct options {
    enum mode mode;
    int connections;
    int threads;
    size_t size;
    uint64_t bytes;
    double duration;
    double warmup;
    double stall;
    int spin;
    int server_pid;
    int cpus[CPU_SETSIZE];
    int cpu_count;
};

struct target {
    struct sockaddr_storage address;
    socklen_t length;
    int tcp;
};

struct connection {
    int fd;
    int index;              // across all threads, for messages and the starting phase
    size_t offset;          // this connection's starting phase in the pattern
    int done;
    // ping-pong
    uint64_t sequence;      // round trips completed
    size_t phase;           // where the current message starts in the pattern
    size_t sent;
    size_t received;
    uint64_t started_ns;
    int wants_output;       // EPOLLOUT registered because a send was short
    // stream and half-close
    uint64_t written;
    uint64_t echoed;
    int shut;
};

struct histogram {
    uint64_t counts[BUCKETS];
    uint64_t total;
    uint64_t max;
};

struct worker {
    pthread_t thread;
    int cpu;                // -1: not pinned
    struct connection *connections;
    int count;
    int epoll_fd;
    unsigned char *buffer;
    struct histogram histogram;
    uint64_t round_trips;   // completed inside the measured window
    uint64_t bytes;         // echoed (streaming)
    uint64_t empty_polls;   // polls that found nothing (-B), during the measured window
    int in_window;          // the last round trip completed inside the measured window
    double empty_poll_ns;   // the CPU time one empty poll costs on this thread
    uint64_t started_ns;
    uint64_t finished_ns;
};

static struct options options = {
    .mode = PING_PONG, .connections = 1, .threads = 1, .size = 0, .bytes = 1ULL << 30,
    .duration = 5, .warmup = 1, .stall = 10, .server_pid = 0, .cpu_count = 0,
};
static unsigned char *pattern;
static pthread_barrier_t ready_barrier, go_barrier;
static uint64_t measure_start_ns, measure_end_ns;
static atomic_int stopping;
static pthread_mutex_t failure_lock = PTHREAD_MUTEX_INITIALIZER;
static int failures;
static char failure[512];

static uint64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

// Records the first failure's reason and stops every thread.
static void fail(const char *format, ...) {
    pthread_mutex_lock(&failure_lock);
    failures++;
    if (failure[0] == 0) {
        va_list arguments;
        va_start(arguments, format);
        vsnprintf(failure, sizeof failure, format, arguments);
        va_end(arguments);
    }
    pthread_mutex_unlock(&failure_lock);
    atomic_store(&stopping, 1);
}

static int stopped(void) { return atomic_load_explicit(&stopping, memory_order_relaxed); }

// MARK: Histogram

static size_t bucket_of(uint64_t value) {
    if (value >= (1ULL << VALUE_BITS)) value = (1ULL << VALUE_BITS) - 1;
    if (value < 2 * SUB_COUNT) return (size_t)value;
    int shift = 63 - __builtin_clzll(value) - SUB_BITS;
    return (size_t)shift * SUB_COUNT + (size_t)(value >> shift);
}

// The midpoint of a bucket: within half a bucket's width of every value in it.
static uint64_t bucket_value(size_t bucket) {
    if (bucket < 2 * SUB_COUNT) return bucket;
    size_t shift = bucket / SUB_COUNT - 1;
    uint64_t low = (uint64_t)(bucket - shift * SUB_COUNT) << shift;
    return low + ((1ULL << shift) - 1) / 2;
}

static void record(struct histogram *histogram, uint64_t value) {
    histogram->counts[bucket_of(value)]++;
    histogram->total++;
    if (value > histogram->max) histogram->max = value;
}

static uint64_t percentile(const struct histogram *histogram, double percent) {
    uint64_t rank = (uint64_t)(percent / 100 * (double)histogram->total + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (size_t bucket = 0; bucket < BUCKETS; bucket++) {
        seen += histogram->counts[bucket];
        if (seen >= rank) {
            uint64_t value = bucket_value(bucket);
            return value < histogram->max ? value : histogram->max;
        }
    }
    return histogram->max;
}

// MARK: CPU time

// A process's user and system time in microseconds; -1 in `user` if unreadable.
struct process_times {
    double user;
    double system;
};

static struct process_times process_cpu_us(int pid) {
    struct process_times unreadable = {-1, -1};
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *file = fopen(path, "r");
    if (file == NULL) return unreadable;
    size_t length = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[length] = 0;
    // The command name in parentheses may contain spaces: fields count from the last ')'.
    char *field = strrchr(text, ')');
    if (field == NULL) return unreadable;
    unsigned long long user = 0, system = 0;
    // Fields 3-13 are skipped; utime and stime are fields 14 and 15.
    if (sscanf(field + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &user, &system) != 2) return unreadable;
    double tick = 1e6 / (double)sysconf(_SC_CLK_TCK);
    return (struct process_times){(double)user * tick, (double)system * tick};
}

// The run time of each thread of a process, in nanoseconds.
struct thread_times {
    int count;
    int capacity;
    int *ids;
    unsigned long long *nanoseconds;
};

// Reads /proc/PID/task/*/schedstat; `count` is -1 if the directory is unreadable.
static struct thread_times threads_cpu_ns(int pid) {
    struct thread_times times = {0, 0, NULL, NULL};
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *directory = opendir(path);
    if (directory == NULL) {
        times.count = -1;
        return times;
    }
    struct dirent *entry;
    while ((entry = readdir(directory)) != NULL) {
        int id = atoi(entry->d_name);
        if (id <= 0) continue;
        char stat_path[96];
        snprintf(stat_path, sizeof stat_path, "/proc/%d/task/%d/schedstat", pid, id);
        FILE *file = fopen(stat_path, "r");
        if (file == NULL) continue;  // the thread ended since the listing
        unsigned long long ran = 0;
        int read = fscanf(file, "%llu", &ran);
        fclose(file);
        if (read != 1) continue;
        if (times.count == times.capacity) {
            times.capacity = times.capacity ? times.capacity * 2 : 64;
            times.ids = realloc(times.ids, sizeof *times.ids * (size_t)times.capacity);
            times.nanoseconds = realloc(times.nanoseconds, sizeof *times.nanoseconds * (size_t)times.capacity);
            if (times.ids == NULL || times.nanoseconds == NULL) fail("out of memory");
        }
        times.ids[times.count] = id;
        times.nanoseconds[times.count] = ran;
        times.count++;
    }
    closedir(directory);
    return times;
}

// The CPU time, in microseconds, that the threads ran between two readings,
// or -1 if a thread of the first is missing from the second (it ended) or its
// number was reused.
static double threads_cpu_us_between(struct thread_times before, struct thread_times after) {
    if (before.count < 0 || after.count < 0) return -1;
    unsigned long long total = 0;
    int matched = 0;
    for (int i = 0; i < after.count; i++) {
        unsigned long long start = 0;
        for (int j = 0; j < before.count; j++) {
            if (before.ids[j] == after.ids[i]) {
                start = before.nanoseconds[j];
                matched++;
                break;
            }
        }
        // Less than before: the number now names a newer thread.
        if (after.nanoseconds[i] < start) return -1;
        total += after.nanoseconds[i] - start;
    }
    return matched == before.count ? (double)total / 1e3 : -1;
}

static double own_cpu_us(void) {
    struct timespec time;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &time);
    return (double)time.tv_sec * 1e6 + (double)time.tv_nsec / 1e3;
}

struct cpu_sample {
    /// utime + stime, in clock ticks' resolution.
    double server_us;
    /// The server's user time alone: its own code, without the kernel's share.
    double server_user_us;
    /// Each server thread's run time, to the nanosecond.
    struct thread_times server_threads;
    double client_us;
};

static struct cpu_sample sample_cpu(void) {
    struct cpu_sample sample = {-1, -1, {-1, 0, NULL, NULL}, own_cpu_us()};
    if (options.server_pid > 0) {
        sample.server_threads = threads_cpu_ns(options.server_pid);
        struct process_times times = process_cpu_us(options.server_pid);
        if (times.user < 0) fail("cannot read /proc/%d/stat: %s", options.server_pid, strerror(errno));
        sample.server_us = times.user + times.system;
        sample.server_user_us = times.user;
    }
    return sample;
}

// The server's CPU time between two samples: per thread to the nanosecond,
// or in clock ticks if a thread ended in between. A thread that both started
// and ended in between is in neither reading; the ticks still count it, so a
// sum well below them (by more than their rounding) means one was missed.
static double server_cpu_us_between(struct cpu_sample before, struct cpu_sample after) {
    double ticks = after.server_us - before.server_us;
    double tick = 1e6 / (double)sysconf(_SC_CLK_TCK);
    double precise = threads_cpu_us_between(before.server_threads, after.server_threads);
    if (precise < 0 || precise < 0.9 * ticks - 2 * tick) return ticks;
    return precise;
}

// MARK: Connections

static int parse_target(const char *text, struct target *target) {
    memset(target, 0, sizeof *target);
    const char *colon = strrchr(text, ':');
    int tcp = text[0] != '@' && strchr(text, '/') == NULL && colon != NULL && colon[1] != 0 &&
              strspn(colon + 1, "0123456789") == strlen(colon + 1);
    if (tcp) {
        char host[256];
        size_t host_length = (size_t)(colon - text);
        if (host_length >= sizeof host) return -1;
        memcpy(host, text, host_length);
        host[host_length] = 0;
        char *name = host;
        if (name[0] == '[' && host_length > 1 && name[host_length - 1] == ']') {  // [::1]:7000
            name[host_length - 1] = 0;
            name++;
        }
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
        int status = getaddrinfo(name, colon + 1, &hints, &found);
        if (status != 0) {
            fprintf(stderr, "load_client: %s: %s\n", text, gai_strerror(status));
            return -1;
        }
        memcpy(&target->address, found->ai_addr, found->ai_addrlen);
        target->length = found->ai_addrlen;
        target->tcp = 1;
        freeaddrinfo(found);
        return 0;
    }
    struct sockaddr_un *address = (struct sockaddr_un *)&target->address;
    address->sun_family = AF_UNIX;
    size_t length = strlen(text);
    if (length == 0 || length >= sizeof address->sun_path) {
        fprintf(stderr, "load_client: %s: the address must be 1 to %zu bytes\n", text, sizeof address->sun_path - 1);
        return -1;
    }
    memcpy(address->sun_path, text, length);
    if (text[0] == '@') address->sun_path[0] = 0;  // Linux abstract name: no trailing NUL counts
    target->length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length + (text[0] == '@' ? 0 : 1));
    return 0;
}

// Connects blocking (a full backlog then waits instead of failing) and then
// makes the socket non-blocking.
static int open_connection(const struct target *target, int index) {
    int fd = socket(target->address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail("connection %d: socket: %s", index, strerror(errno));
        return -1;
    }
    int status;
    do status = connect(fd, (const struct sockaddr *)&target->address, target->length);
    while (status != 0 && errno == EINTR);
    if (status != 0) {
        fail("connection %d: connect: %s", index, strerror(errno));
        close(fd);
        return -1;
    }
    if (target->tcp) {
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void set_events(struct worker *worker, struct connection *connection, int operation, uint32_t events) {
    struct epoll_event event = {.events = events, .data.ptr = connection};
    if (epoll_ctl(worker->epoll_fd, operation, connection->fd, &event) != 0)
        fail("connection %d: epoll_ctl: %s", connection->index, strerror(errno));
}

static void finish(struct worker *worker, struct connection *connection) {
    connection->done = 1;
    epoll_ctl(worker->epoll_fd, EPOLL_CTL_DEL, connection->fd, NULL);
}

// Reports where an echo first differs from what was expected.
static void mismatch(const struct connection *connection, const unsigned char *got, const unsigned char *expected,
                     size_t count, uint64_t position, const char *what) {
    size_t at = 0;
    while (at < count && got[at] == expected[at]) at++;
    fail("connection %d: %s: byte %llu of the echo is 0x%02x, sent 0x%02x", connection->index, what,
         (unsigned long long)(position + at), got[at], expected[at]);
}

// Waits for events: asleep in epoll_wait, or with -B polling without sleeping,
// so that the server never has to wake the client up. Polls that found nothing
// are counted: that CPU time is waiting, not work. Returns the number of events,
// or -1 after a failure.
static int wait_for_events(struct worker *worker, struct epoll_event *events) {
    for (;;) {
        int ready = epoll_wait(worker->epoll_fd, events, MAX_EVENTS, options.spin ? 0 : 100);
        if (ready > 0) return ready;
        if (ready < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait: %s", strerror(errno));
            return -1;
        }
        if (options.spin && worker->in_window) worker->empty_polls++;
        return 0;
    }
}

static uint64_t thread_cpu_ns(void) {
    struct timespec time;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time);
    return (uint64_t)time.tv_sec * 1000000000u + (uint64_t)time.tv_nsec;
}

// The CPU time of one epoll_wait that finds nothing: the best of a few batches on
// an empty epoll set (an empty ready list costs the same however many are registered).
static double measure_empty_poll(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event;
    double best = 0;
    for (int batch = 0; batch < 5; batch++) {
        uint64_t start = thread_cpu_ns();
        for (int poll = 0; poll < 2000; poll++) epoll_wait(fd, &event, 1, 0);
        double each = (double)(thread_cpu_ns() - start) / 2000;
        if (batch == 0 || each < best) best = each;
    }
    close(fd);
    return best;
}

// MARK: Ping-pong

// Sends the rest of the current message; returns -1 on error.
static int send_message(struct worker *worker, struct connection *connection) {
    while (connection->sent < options.size) {
        ssize_t count = send(connection->fd, pattern + connection->phase + connection->sent,
                             options.size - connection->sent, MSG_NOSIGNAL);
        if (count < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) {
                fail("connection %d: send: %s", connection->index, strerror(errno));
                return -1;
            }
            if (!connection->wants_output) {
                connection->wants_output = 1;
                set_events(worker, connection, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT | EPOLLET);
            }
            return 0;
        }
        connection->sent += (size_t)count;
    }
    if (connection->wants_output) {
        connection->wants_output = 0;
        set_events(worker, connection, EPOLL_CTL_MOD, EPOLLIN | EPOLLET);
    }
    return 0;
}

static int begin_round_trip(struct worker *worker, struct connection *connection, uint64_t now) {
    connection->phase = (connection->offset + connection->sequence * STEP) % PERIOD;
    connection->sent = connection->received = 0;
    connection->started_ns = now;
    return send_message(worker, connection);
}

// Reads what has arrived; returns 1 once the whole echo is in, 0 if more is to come, -1 on error.
static int receive_echo(struct worker *worker, struct connection *connection) {
  for (;;) {
    ssize_t count = read(connection->fd, worker->buffer, READ_SIZE);
    if (count < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return 0;
        fail("connection %d: read: %s", connection->index, strerror(errno));
        return -1;
    }
    if (count == 0) {
        fail("connection %d: unexpected end of stream after %llu round trips and %zu of %zu echoed bytes",
             connection->index, (unsigned long long)connection->sequence, connection->received, options.size);
        return -1;
    }
    if (connection->received + (size_t)count > options.size) {
        fail("connection %d: %zu bytes came back for a %zu-byte message", connection->index,
             connection->received + (size_t)count, options.size);
        return -1;
    }
    const unsigned char *expected = pattern + connection->phase + connection->received;
    if (memcmp(worker->buffer, expected, (size_t)count) != 0) {
        char what[64];
        snprintf(what, sizeof what, "round trip %llu", (unsigned long long)connection->sequence);
        mismatch(connection, worker->buffer, expected, (size_t)count, connection->received, what);
        return -1;
    }
    connection->received += (size_t)count;
    if (connection->received == options.size) return 1;
    // A short read emptied the socket: data that arrives later raises a new edge.
    if ((size_t)count < READ_SIZE) return 0;
  }
}

static void ping_pong(struct worker *worker) {
    uint64_t now = now_ns(), last_progress = now;
    int active = worker->count;
    for (int index = 0; index < worker->count; index++)
        if (begin_round_trip(worker, &worker->connections[index], now) < 0) return;
    struct epoll_event events[MAX_EVENTS];
    while (active > 0 && !stopped()) {
        int ready = wait_for_events(worker, events);
        if (ready < 0) return;
        if (ready == 0) {
            if ((double)(now_ns() - last_progress) > options.stall * 1e9)
                fail("no echo for %.0f s on %d connections", options.stall, active);
            continue;
        }
        for (int index = 0; index < ready; index++) {
            struct connection *connection = events[index].data.ptr;
            if ((events[index].events & EPOLLOUT) && send_message(worker, connection) < 0) return;
            if (!(events[index].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            int complete = receive_echo(worker, connection);
            if (complete < 0) return;
            now = last_progress = now_ns();
            if (!complete) continue;
            worker->in_window = now >= measure_start_ns && now < measure_end_ns;
            if (worker->in_window) {
                record(&worker->histogram, now - connection->started_ns);
                worker->round_trips++;
            }
            connection->sequence++;
            if (now < measure_end_ns) {
                // The end of one round trip is the start of the next: one clock read per round trip.
                if (begin_round_trip(worker, connection, now) < 0) return;
            } else {
                finish(worker, connection);  // every reply was awaited and checked
                active--;
            }
        }
    }
}

// MARK: Streaming

// Writes and reads until both would block; returns 1 when the connection is complete, -1 on error.
static int stream_service(struct worker *worker, struct connection *connection) {
    uint64_t total = options.bytes;
    while (connection->written < total) {
        // Writes of -s bytes; a short one is finished before the next starts.
        uint64_t left_in_write = options.size - connection->written % options.size;
        if (left_in_write > total - connection->written) left_in_write = total - connection->written;
        size_t phase = (size_t)((connection->offset + connection->written) % PERIOD);
        ssize_t count = send(connection->fd, pattern + phase, (size_t)left_in_write, MSG_NOSIGNAL);
        if (count < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            fail("connection %d: send after %llu bytes sent, %llu echoed: %s", connection->index,
                 (unsigned long long)connection->written, (unsigned long long)connection->echoed, strerror(errno));
            return -1;
        }
        connection->written += (uint64_t)count;
    }
    if (options.mode == HALF_CLOSE && connection->written == total && !connection->shut) {
        if (shutdown(connection->fd, SHUT_WR) != 0) {
            fail("connection %d: shutdown: %s", connection->index, strerror(errno));
            return -1;
        }
        connection->shut = 1;
    }
    for (;;) {
        ssize_t count = read(connection->fd, worker->buffer, READ_SIZE);
        if (count < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 0;
            fail("connection %d: read after %llu echoed bytes: %s", connection->index,
                 (unsigned long long)connection->echoed, strerror(errno));
            return -1;
        }
        if (count == 0) {
            if (connection->shut && connection->echoed == total) return 1;
            fail("connection %d: unexpected end of stream after %llu of %llu echoed bytes", connection->index,
                 (unsigned long long)connection->echoed, (unsigned long long)total);
            return -1;
        }
        if (connection->echoed + (uint64_t)count > connection->written) {
            fail("connection %d: %llu bytes came back, %llu were sent", connection->index,
                 (unsigned long long)(connection->echoed + (uint64_t)count), (unsigned long long)connection->written);
            return -1;
        }
        const unsigned char *expected = pattern + (connection->offset + connection->echoed) % PERIOD;
        if (memcmp(worker->buffer, expected, (size_t)count) != 0) {
            mismatch(connection, worker->buffer, expected, (size_t)count, connection->echoed, "the stream differs");
            return -1;
        }
        connection->echoed += (uint64_t)count;
        worker->bytes += (uint64_t)count;
        // Plain streaming ends with the last echoed byte; half-close waits for the end of stream.
        if (options.mode == STREAM && connection->echoed == total) return 1;
    }
}

static void stream(struct worker *worker) {
    uint64_t last_progress = now_ns();
    int active = worker->count;
    worker->started_ns = last_progress;
    worker->in_window = 1;
    // Registered edge-triggered: the first edge reports the writable socket.
    struct epoll_event events[MAX_EVENTS];
    while (active > 0 && !stopped()) {
        int ready = wait_for_events(worker, events);
        if (ready < 0) return;
        if (ready == 0) {
            if ((double)(now_ns() - last_progress) > options.stall * 1e9)
                fail("no progress for %.0f s on %d connections (an echo is missing or the server stalled)",
                     options.stall, active);
            continue;
        }
        last_progress = now_ns();
        for (int index = 0; index < ready; index++) {
            struct connection *connection = events[index].data.ptr;
            int status = stream_service(worker, connection);
            if (status < 0) return;
            if (status > 0) {
                finish(worker, connection);
                active--;
            }
        }
    }
    worker->finished_ns = now_ns();
}

// MARK: Threads

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) fail("sched_setaffinity to CPU %d: %s", cpu, strerror(errno));
}

static void *run_worker(void *argument) {
    struct worker *worker = argument;
    if (worker->cpu >= 0) pin(worker->cpu);
    if (options.spin) worker->empty_poll_ns = measure_empty_poll();
    worker->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    worker->buffer = malloc(READ_SIZE);
    if (worker->epoll_fd < 0 || worker->buffer == NULL) fail("epoll_create1 or malloc: %s", strerror(errno));
    uint32_t events = options.mode == PING_PONG ? EPOLLIN | EPOLLET : EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    for (int index = 0; index < worker->count && !stopped(); index++)
        set_events(worker, &worker->connections[index], EPOLL_CTL_ADD, events);
    pthread_barrier_wait(&ready_barrier);
    pthread_barrier_wait(&go_barrier);
    if (!stopped()) {
        if (options.mode == PING_PONG) ping_pong(worker);
        else stream(worker);
    }
    close(worker->epoll_fd);
    free(worker->buffer);
    return NULL;
}

// Sleeps until an instant, waking early if a thread failed.
static void sleep_until(uint64_t deadline) {
    for (uint64_t now = now_ns(); now < deadline && !stopped(); now = now_ns()) {
        uint64_t nap = deadline - now < 20000000 ? deadline - now : 20000000;
        struct timespec time = {.tv_sec = 0, .tv_nsec = (long)nap};
        nanosleep(&time, NULL);
    }
}

// MARK: Output

static void print_number(const char *name, double value, int valid, const char *format) {
    printf(", \"%s\": ", name);
    if (valid) printf(format, value);
    else printf("null");
}

static void print_string(const char *text) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c < 0x20) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}

static void report(const struct histogram *histogram, uint64_t round_trips, uint64_t bytes, uint64_t empty_polls,
                   double seconds, struct cpu_sample before, struct cpu_sample after) {
    int pingpong = options.mode == PING_PONG;
    double operations = pingpong ? (double)round_trips : (double)bytes / 1e6;  // per round trip, or per MB
    int measured = seconds > 0 && operations > 0;
    int server = measured && before.server_us >= 0 && after.server_us >= 0;
    double server_us = server ? server_cpu_us_between(before, after) : 0;
    double client_us = after.client_us - before.client_us;
    int latencies = pingpong && histogram->total > 0;
    printf("{\"mode\": \"%s\", \"connections\": %d, \"threads\": %d, \"size\": %zu, \"spin\": %s",
           mode_names[options.mode], options.connections, options.threads, options.size, options.spin ? "true" : "false");
    print_number("duration", seconds, 1, "%.3f");
    print_number("round_trips", (double)round_trips, pingpong, "%.0f");
    print_number("rtt_per_s", (double)round_trips / seconds, pingpong && seconds > 0, "%.1f");
    print_number("p50_us", (double)percentile(histogram, 50) / 1e3, latencies, "%.2f");
    print_number("p99_us", (double)percentile(histogram, 99) / 1e3, latencies, "%.2f");
    print_number("p999_us", (double)percentile(histogram, 99.9) / 1e3, latencies, "%.2f");
    print_number("max_us", (double)histogram->max / 1e3, latencies, "%.2f");
    print_number("bytes", (double)bytes, !pingpong, "%.0f");
    print_number("mb_per_s", (double)bytes / seconds / 1e6, !pingpong && seconds > 0, "%.1f");
    print_number("server_cpu_us_per_op", server_us / operations, server, "%.3f");
    print_number("server_user_us_per_op", (after.server_user_us - before.server_user_us) / operations, server, "%.3f");
    print_number("server_cpu_util", server_us / (seconds * 1e6), server, "%.3f");
    print_number("client_cpu_us_per_op", client_us / operations, measured, "%.3f");
    print_number("client_cpu_util", client_us / (seconds * 1e6), measured, "%.3f");
    print_number("client_empty_polls", (double)empty_polls, options.spin, "%.0f");
    printf(", \"errors\": %d", failures);
    if (failure[0]) {
        printf(", \"error\": ");
        print_string(failure);
    }
    printf("}\n");
    fflush(stdout);
}

// MARK: Arguments

static void usage(int status) {
    fprintf(status ? stderr : stdout,
            "usage: load_client [-m ping-pong|stream|half-close] [-c connections] [-t threads]\n"
            "                   [-s size] [-b bytes] [-d seconds] [-w seconds] [-p server-pid]\n"
            "                   [-a cpu[,cpu...]] [-T stall-seconds] [-B] ADDRESS\n"
            "ADDRESS: a socket path, @name (Linux abstract), or host:port (TCP; write ./a:1 for a path).\n"
            "-s: message size (ping-pong, default 100) or write size (streaming, default 65536).\n"
            "-b: bytes each connection streams (default 1G); sizes take K, M, G (powers of 1024).\n"
            "-a: pin thread i to the i-th CPU of the list (cycled).\n"
            "-B: busy-poll (never sleep in epoll_wait); CPU spent in empty polls is not counted as work.\n");
    exit(status);
}

static uint64_t parse_size(const char *text) {
    char *end;
    unsigned long long value = strtoull(text, &end, 10);
    switch (*end) {
    case 'K': case 'k': value <<= 10; end++; break;
    case 'M': case 'm': value <<= 20; end++; break;
    case 'G': case 'g': value <<= 30; end++; break;
    default: break;
    }
    if (end == text || *end != 0 || value == 0) {
        fprintf(stderr, "load_client: not a positive size: %s\n", text);
        usage(2);
    }
    return value;
}

static double parse_seconds(const char *text, int allow_zero) {
    char *end;
    double value = strtod(text, &end);
    if (end == text || *end != 0 || value < 0 || (value == 0 && !allow_zero)) {
        fprintf(stderr, "load_client: not a valid number of seconds: %s\n", text);
        usage(2);
    }
    return value;
}

static void parse_cpus(const char *text) {
    char *copy = strdup(text), *rest = copy, *item;
    while ((item = strsep(&rest, ",")) != NULL) {
        char *end;
        long cpu = strtol(item, &end, 10);
        if (end == item || *end != 0 || cpu < 0 || cpu >= CPU_SETSIZE || options.cpu_count == CPU_SETSIZE) {
            fprintf(stderr, "load_client: not a CPU list: %s\n", text);
            usage(2);
        }
        options.cpus[options.cpu_count++] = (int)cpu;
    }
    free(copy);
}

static void parse_arguments(int argc, char **argv) {
    int option;
    while ((option = getopt(argc, argv, "m:c:t:s:b:d:w:p:a:T:Bh")) != -1) {
        switch (option) {
        case 'm':
            if (strcmp(optarg, "ping-pong") == 0) options.mode = PING_PONG;
            else if (strcmp(optarg, "stream") == 0) options.mode = STREAM;
            else if (strcmp(optarg, "half-close") == 0) options.mode = HALF_CLOSE;
            else usage(2);
            break;
        case 'c': options.connections = (int)parse_size(optarg); break;
        case 't': options.threads = (int)parse_size(optarg); break;
        case 's': options.size = (size_t)parse_size(optarg); break;
        case 'b': options.bytes = parse_size(optarg); break;
        case 'd': options.duration = parse_seconds(optarg, 0); break;
        case 'w': options.warmup = parse_seconds(optarg, 1); break;
        case 'p': options.server_pid = (int)parse_size(optarg); break;
        case 'a': parse_cpus(optarg); break;
        case 'T': options.stall = parse_seconds(optarg, 0); break;
        case 'B': options.spin = 1; break;
        case 'h': usage(0); break;
        default: usage(2);
        }
    }
    if (optind != argc - 1) usage(2);
    if (options.size == 0) options.size = options.mode == PING_PONG ? 100 : 65536;
    if (options.threads > options.connections) {
        fprintf(stderr, "load_client: more threads (%d) than connections (%d)\n", options.threads, options.connections);
        usage(2);
    }
}

// Room for as many descriptors as connections, if the hard limit allows.
static void raise_descriptor_limit(void) {
    struct rlimit limit;
    rlim_t wanted = (rlim_t)options.connections + (rlim_t)options.threads + 16;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < wanted) {
        limit.rlim_cur = limit.rlim_max == RLIM_INFINITY || limit.rlim_max > wanted ? wanted : limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

// The periodic pattern every window is cut from: random bytes (xorshift64*), repeated.
static unsigned char *make_pattern(size_t window) {
    unsigned char *bytes = malloc(window + PERIOD);
    if (bytes == NULL) return NULL;
    uint64_t state = 0x9E3779B97F4A7C15u;
    for (size_t index = 0; index < PERIOD; index++) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes[index] = (unsigned char)((state * 0x2545F4914F6CDD1Du) >> 56);
    }
    for (size_t index = PERIOD; index < window + PERIOD; index++) bytes[index] = bytes[index - PERIOD];
    return bytes;
}

int main(int argc, char **argv) {
    parse_arguments(argc, argv);
    struct target target;
    if (parse_target(argv[optind], &target) != 0) return 2;
    signal(SIGPIPE, SIG_IGN);
    raise_descriptor_limit();
    pattern = make_pattern(options.size > READ_SIZE ? options.size : READ_SIZE);
    struct connection *connections = calloc((size_t)options.connections, sizeof *connections);
    struct worker *workers = calloc((size_t)options.threads, sizeof *workers);
    if (pattern == NULL || connections == NULL || workers == NULL) {
        fprintf(stderr, "load_client: out of memory\n");
        return 1;
    }
    if (options.cpu_count > 0) pin(options.cpus[0]);  // the main thread only samples and sleeps

    struct histogram *histogram = calloc(1, sizeof *histogram);
    uint64_t round_trips = 0, bytes = 0, empty_polls = 0;
    double idle_ns = 0;
    double seconds = 0;
    struct cpu_sample before = {-1, -1, {-1, 0, NULL, NULL}, 0}, after = before;
    for (int index = 0; index < options.connections; index++) connections[index].fd = -1;
    for (int index = 0; index < options.connections && !stopped(); index++) {
        connections[index].index = index;
        // Spread the connections' starting phases over the whole period.
        connections[index].offset = (size_t)(((uint64_t)index * 40503u) % PERIOD);
        connections[index].fd = open_connection(&target, index);
    }
    if (!stopped()) {
        pthread_barrier_init(&ready_barrier, NULL, (unsigned)options.threads + 1);
        pthread_barrier_init(&go_barrier, NULL, (unsigned)options.threads + 1);
        for (int index = 0; index < options.threads; index++) {
            struct worker *worker = &workers[index];
            int first = (int)((long)options.connections * index / options.threads);
            int last = (int)((long)options.connections * (index + 1) / options.threads);
            worker->connections = connections + first;
            worker->count = last - first;
            worker->cpu = options.cpu_count > 0 ? options.cpus[index % options.cpu_count] : -1;
            if (pthread_create(&worker->thread, NULL, run_worker, worker) != 0) {
                fprintf(stderr, "load_client: pthread_create failed\n");
                return 1;
            }
        }
        pthread_barrier_wait(&ready_barrier);
        uint64_t start = now_ns();
        measure_start_ns = start + (uint64_t)(options.warmup * 1e9);
        measure_end_ns = measure_start_ns + (uint64_t)(options.duration * 1e9);
        if (options.mode != PING_PONG) {
            measure_start_ns = 0;  // a transfer is measured from start to end
            measure_end_ns = UINT64_MAX;
            before = sample_cpu();
        }
        pthread_barrier_wait(&go_barrier);
        if (options.mode == PING_PONG) {
            sleep_until(measure_start_ns);
            before = sample_cpu();
            sleep_until(measure_end_ns);
            after = sample_cpu();
            seconds = options.duration;
        }
        for (int index = 0; index < options.threads; index++) pthread_join(workers[index].thread, NULL);
        uint64_t first_start = UINT64_MAX, last_finish = 0;
        for (int index = 0; index < options.threads; index++) {
            struct worker *worker = &workers[index];
            for (size_t bucket = 0; bucket < BUCKETS; bucket++) histogram->counts[bucket] += worker->histogram.counts[bucket];
            histogram->total += worker->histogram.total;
            if (worker->histogram.max > histogram->max) histogram->max = worker->histogram.max;
            round_trips += worker->round_trips;
            bytes += worker->bytes;
            empty_polls += worker->empty_polls;
            idle_ns += (double)worker->empty_polls * worker->empty_poll_ns;
            if (worker->started_ns < first_start) first_start = worker->started_ns;
            if (worker->finished_ns > last_finish) last_finish = worker->finished_ns;
        }
        if (options.mode != PING_PONG) {
            after = sample_cpu();
            seconds = last_finish > first_start ? (double)(last_finish - first_start) / 1e9 : 0;
        }
    }
    for (int index = 0; index < options.connections; index++)
        if (connections[index].fd >= 0) close(connections[index].fd);
    if (options.mode == PING_PONG && !stopped() && round_trips == 0) fail("no round trip completed in the measured window");
    after.client_us -= idle_ns / 1e3;  // spinning on empty polls is waiting for the server
    report(histogram, round_trips, bytes, empty_polls, seconds, before, after);
    free(before.server_threads.ids);
    free(before.server_threads.nanoseconds);
    free(after.server_threads.ids);
    free(after.server_threads.nanoseconds);
    if (failures) {
        fprintf(stderr, "load_client: %s\n", failure);
        return 1;
    }
    return 0;
}
