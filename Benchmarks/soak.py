#!/usr/bin/env python3
"""Soaks the real `uds echo-server` and prints, as a Markdown table, what it held.

    python3 Benchmarks/soak.py [--uds PATH] [--io async|threads] [--quick] [--only killed,storm,...]

Each scenario starts a fresh server (`uds echo-server PATH --quiet --io IO`),
does something hostile to it, then checks that it is alive, that a new client
still gets its bytes back, and that its open descriptors (/proc/PID/fd) came
back to what they were; it reports descriptors and resident memory (VmRSS)
before, at the peak and after. Scenarios:

  killed   clients streaming echoes are SIGKILLed, again and again, while one
           client checks a long echo byte for byte
  storm    a storm of SIGUSR1 at every thread of the server, which handles it
           (a handler without SA_RESTART, so blocking calls see EINTR), during
           a long verified echo and short connections
  10k      10,000 concurrent connections, each echoing a message of its own
  fds      peers send 250 descriptors with every message; the server's
           descriptor count must stay bounded
  limit    the server under a descriptor limit of 256 (soft and hard) with 300
           clients; afterwards a new client still gets an echo

The server's CLI handles only SIGINT and SIGTERM, which stop it, so the storm
gives it a SIGUSR1 handler through a small LD_PRELOAD library, compiled here
with the C compiler (cc, or the Swift toolchain's clang); without one the
scenario is reported as skipped. The handler counts the signals it caught.

--quick keeps the whole run under about two minutes. Exits 1 if a scenario failed.
Only local Unix sockets are used, and every loop is bounded in count and time.
"""
import argparse
import ctypes
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A client that streams echoes until it is killed; it says "ready" after its
# first round trip, so it is killed mid-stream, not while connecting.
STREAMING_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
chunk = bytes(range(256)) * 64
first = True
while True:
    s.sendall(chunk)
    got = 0
    while got < len(chunk):
        part = s.recv(len(chunk) - got)
        if not part:
            sys.exit(0)
        got += len(part)
    if first:
        print("ready", flush=True)
        first = False
"""

# The SIGUSR1 handler for the storm: counts, and writes the count at exit.
STORM_SHIM = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
static volatile sig_atomic_t caught;
static void on_signal(int number) { (void)number; caught++; }
static void report(void) {
    const char *path = getenv("SOAK_SIGNAL_COUNT");
    FILE *file = path ? fopen(path, "w") : NULL;
    if (file) { fprintf(file, "%d\n", (int)caught); fclose(file); }
}
__attribute__((constructor)) static void install(void) {
    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0; /* no SA_RESTART: interrupted calls fail with EINTR */
    sigaction(SIGUSR1, &action, NULL);
    atexit(report);
}
"""


class Failed(Exception):
    pass


def proc_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def proc_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Server:
    """One `uds echo-server` with a sampler of its descriptors and memory."""

    def __init__(self, uds, io, directory, name, descriptor_limit=None, env=None):
        self.path = os.path.join(directory, name + ".sock")
        self.log_path = os.path.join(directory, name + ".log")
        self.log = open(self.log_path, "w")

        def limit():
            if descriptor_limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (descriptor_limit, descriptor_limit))

        self.process = subprocess.Popen(
            [uds, "echo-server", self.path, "--quiet", "--io", io],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=limit, env={**os.environ, **(env or {})})
        self.pid = self.process.pid
        deadline = time.monotonic() + 20
        while True:
            try:
                echo_once(self.path, b"warm-up", timeout=5)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise Failed(f"the server did not start: {self.describe_exit()} {self.log_tail()}")
                time.sleep(0.05)
        time.sleep(0.2)
        self.fds_before = proc_fds(self.pid)
        self.rss_before = proc_rss_mib(self.pid)
        self.fds_peak = self.fds_before
        self.rss_peak = self.rss_before
        self.sampling = True
        self.sampler = threading.Thread(target=self.sample, daemon=True)
        self.sampler.start()

    def sample(self):
        while self.sampling and self.process.poll() is None:
            fds, rss = proc_fds(self.pid), proc_rss_mib(self.pid)
            if fds is not None:
                self.fds_peak = max(self.fds_peak, fds)
            if rss is not None:
                self.rss_peak = max(self.rss_peak, rss)
            time.sleep(0.05)

    def alive(self):
        return self.process.poll() is None

    def describe_exit(self):
        code = self.process.poll()
        if code is None:
            return "running"
        return f"died of {signal_name(-code)}" if code < 0 else f"exited with status {code}"

    def log_tail(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as log:
            lines = [line.strip() for line in log if line.strip() and not line.startswith("starting up")]
        return ("(" + " | ".join(lines[-3:])[:300] + ")") if lines else ""

    def settle(self, slack=4, timeout=10):
        """Waits until the descriptors are back to the start (plus slack); returns the count."""
        deadline = time.monotonic() + timeout
        while True:
            fds = proc_fds(self.pid)
            if fds is None or fds <= self.fds_before + slack or time.monotonic() > deadline:
                return fds
            time.sleep(0.1)

    def stop(self):
        self.sampling = False
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def connect(path, timeout=20):
    """A connected socket; waits while the listen queue is full (EAGAIN), at most `timeout`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                s.close()
                raise Failed(f"connect still refused with EAGAIN after {timeout}s")
            time.sleep(0.001)
        except OSError:
            s.close()
            raise
    s.settimeout(timeout)
    return s


def echo_once(path, message, timeout=10):
    with connect(path, timeout) as s:
        s.sendall(message)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            received += part
    if received != message:
        raise Failed(f"echo of {len(message)} bytes came back as {len(received)} bytes, different")


def verified_echo(path, total, stop_early=None):
    """Streams `total` pseudo-random bytes and checks the echo byte for byte."""
    block = 1 << 20
    failure = []

    def blocks(seed):
        rng = random.Random(seed)
        sent = 0
        while sent < total:
            size = min(block, total - sent)
            yield rng.randbytes(size)
            sent += size

    with connect(path, 60) as s:

        def write():
            try:
                for data in blocks(7):
                    s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError as error:
                failure.append(f"writing: {error}")

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        checked = 0
        try:
            for expected in blocks(7):
                view = memoryview(expected)
                offset = 0
                while offset < len(expected):
                    part = s.recv(len(expected) - offset)
                    if not part:
                        raise Failed(f"the echo ended after {checked + offset} of {total} bytes")
                    if part != view[offset:offset + len(part)]:
                        raise Failed(f"the echo differs within bytes {checked + offset}..{checked + offset + len(part)}")
                    offset += len(part)
                checked += len(expected)
            if s.recv(1):
                raise Failed("the echo has bytes past the end")
        except socket.timeout:
            raise Failed(f"the echo stalled after {checked} of {total} bytes")
        writer.join(timeout=30)
    if failure:
        raise Failed(failure[0])
    return checked


def raise_descriptor_limit(needed):
    """Raises this process's descriptor limit (and so the servers') to `needed`, if it can."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))  # root may raise the hard limit
            return
        except (ValueError, OSError):
            needed = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# MARK: scenarios (each returns what was done; raises Failed)

def killed_clients(server, scale):
    clients, seconds, verified = scale["killed"]
    result = {}

    def verify():
        try:
            result["bytes"] = verified_echo(server.path, verified)
        except Failed as error:
            result["error"] = str(error)

    verifier = threading.Thread(target=verify, daemon=True)
    verifier.start()
    running, killed = [], 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and server.alive():
            while len(running) < clients:
                child = subprocess.Popen([sys.executable, "-c", STREAMING_CLIENT, server.path],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                running.append(child)
            victim = running.pop(random.randrange(len(running)))
            # Killed once it streams (or after a second, if it never does).
            ready = selectors.DefaultSelector()
            ready.register(victim.stdout, selectors.EVENT_READ)
            ready.select(timeout=1)
            ready.close()
            time.sleep(random.uniform(0, 0.05))
            victim.kill()
            victim.wait()
            victim.stdout.close()
            killed += 1
    finally:
        for child in running:
            child.kill()
            child.wait()
            child.stdout.close()
    verifier.join(timeout=120)
    if "error" in result:
        raise Failed("verified client: " + result["error"])
    if "bytes" not in result:
        raise Failed("the verified echo did not finish")
    return f"{killed} streaming clients SIGKILLed ({clients} at a time, {seconds}s) beside a verified {verified >> 20} MiB echo"


def build_storm_shim(directory):
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if not compiler:
        return None
    source = os.path.join(directory, "storm.c")
    library = os.path.join(directory, "storm.so")
    with open(source, "w") as file:
        file.write(STORM_SHIM)
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O1", source, "-o", library],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return library if built.returncode == 0 else None


def thread_ids(pid):
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def threads_accepting(pid, number):
    """How many threads do not block signal `number`."""
    count = 0
    for tid in thread_ids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                for line in status:
                    if line.startswith("SigBlk:"):
                        if not int(line.split()[1], 16) & (1 << (number - 1)):
                            count += 1
        except OSError:
            pass
    return count


def signal_storm(server, scale, count_path):
    seconds, verified, churn = scale["storm"]
    libc = ctypes.CDLL(None, use_errno=True)
    tgkill = 234 if os.uname().machine == "x86_64" else 131  # aarch64
    stop = threading.Event()
    sent = [0]

    receiving = [0, 0]  # the most threads that accept SIGUSR1, of how many

    def storm():
        rounds = 0
        while not stop.is_set() and server.alive():
            threads = thread_ids(server.pid)
            for tid in threads:
                if libc.syscall(tgkill, server.pid, tid, signal.SIGUSR1) == 0:
                    sent[0] += 1
            if rounds % 200 == 0:
                accepting = threads_accepting(server.pid, signal.SIGUSR1)
                if accepting > receiving[0]:
                    receiving[:] = [accepting, len(threads)]
            rounds += 1
            time.sleep(0.0005)

    stormer = threading.Thread(target=storm, daemon=True)
    stormer.start()
    started = time.monotonic()
    deadline = started + seconds
    checked = connections = 0
    try:
        # Long echoes and short connections, until the storm has run its time.
        while time.monotonic() < deadline and checked < verified * 64:
            checked += verified_echo(server.path, verified)
            for _ in range(churn):
                echo_once(server.path, os.urandom(512))
                connections += 1
    finally:
        stop.set()
        stormer.join()
    return (f"{sent[0]} SIGUSR1 sent to the server's threads (at most {receiving[0]} of {receiving[1]} threads accept it) "
            f"during {time.monotonic() - started:.0f}s of verified echoes ({checked >> 20} MiB) and {connections} short connections")


def caught_signals(server, count_path):
    """Stops the server; the handler writes its count at exit."""
    server.stop()
    if server.describe_exit() != "exited with status 0":
        raise Failed(f"the server {server.describe_exit()} at SIGTERM after the storm")
    try:
        with open(count_path) as file:
            return int(file.read())
    except (OSError, ValueError):
        raise Failed("the SIGUSR1 handler left no count")


def many_connections(server, scale):
    count = scale["10k"]
    sockets = []
    selector = selectors.DefaultSelector()
    try:
        for index in range(count):
            sockets.append(connect(server.path))
        for index, s in enumerate(sockets):
            s.sendall(b"%015d\n" % index)
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ, index)
        received = {}
        deadline = time.monotonic() + 60
        while len(received) < count or any(len(v) < 16 for v in received.values()):
            if time.monotonic() > deadline:
                short = sum(1 for i in range(count) if len(received.get(i, b"")) < 16)
                raise Failed(f"{short} of {count} connections had no full echo after 60s")
            for key, _ in selector.select(timeout=1):
                part = key.fileobj.recv(64)
                if not part:
                    selector.unregister(key.fileobj)
                    continue
                received[key.data] = received.get(key.data, b"") + part
                if len(received[key.data]) >= 16:
                    selector.unregister(key.fileobj)
        wrong = [i for i in range(count) if received.get(i) != b"%015d\n" % i]
        if wrong:
            raise Failed(f"{len(wrong)} connections got someone else's bytes (first: {wrong[0]})")
    finally:
        selector.close()
        for s in sockets:
            s.close()
    return f"{count} connections open at once, each echoed its own 16 bytes"


def passed_descriptors(server, scale):
    clients, messages, per_message = scale["fds"]
    files = [os.open("/dev/null", os.O_RDONLY) for _ in range(per_message)]
    # A blocking socket keeps what plain reads brought, for a later
    # receiveWithDescriptors, up to the 253 one message can carry; the rest
    # is closed. So each connection may hold its own and 253 more.
    bound = server.fds_before + clients * (1 + 253) + 16
    highest = server.fds_before
    try:
        connections = []
        for _ in range(clients):
            connections.append(connect(server.path))
        for round_ in range(messages):
            for index, s in enumerate(connections):
                payload = b"%08d:%08d\n" % (index, round_)
                socket.send_fds(s, [payload], files)
                received = b""
                while len(received) < len(payload):
                    part = s.recv(len(payload) - len(received))
                    if not part:
                        raise Failed(f"connection {index} closed by the server at message {round_}")
                    received += part
                if received != payload:
                    raise Failed(f"connection {index}: a wrong echo at message {round_}")
            fds = proc_fds(server.pid)
            highest = max(highest, fds or 0)
            server.fds_peak = max(server.fds_peak, highest)
            if fds is not None and fds > bound:
                raise Failed(f"the server holds {fds} descriptors after {round_ + 1} rounds "
                             f"(started with {server.fds_before}; the bound is {bound})")
        for s in connections:
            s.close()
    finally:
        for fd in files:
            os.close(fd)
    sent = clients * messages * per_message
    return (f"{clients} peers sent {clients * messages} messages with {per_message} descriptors each "
            f"({sent} in all); the server held at most {highest} (bound {bound})")


def low_descriptor_limit(server, scale):
    count = scale["limit"]
    sockets, refused = [], 0
    try:
        for _ in range(count):
            try:
                s = connect(server.path, timeout=2)
            except (Failed, OSError):
                refused += 1
                continue
            try:
                s.sendall(b"x")
            except OSError:
                refused += 1
            sockets.append(s)
        time.sleep(2)
        if not server.alive():
            raise Failed(f"the server {server.describe_exit()} with {len(sockets)} clients connected {server.log_tail()}")
        answered = 0
        for s in sockets:
            try:
                s.settimeout(0.05)
                if s.recv(1) == b"x":
                    answered += 1
            except OSError:
                pass
    finally:
        for s in sockets:
            s.close()
    time.sleep(1)
    if not server.alive():
        raise Failed(f"the server {server.describe_exit()} once the clients left {server.log_tail()}")
    try:
        echo_once(server.path, b"after the crowd", timeout=10)
    except (OSError, Failed) as error:
        raise Failed(f"a new client got no echo: {error}")
    return (f"descriptor limit 256; {len(sockets)} of {count} clients connected ({answered} echoed at once, "
            f"{refused} refused), then all left and a new client got its echo")


SCENARIOS = ["killed", "storm", "10k", "fds", "limit"]
TITLES = {
    "killed": "(i) clients killed mid-stream",
    "storm": "(ii) signal storm",
    "10k": "(iii) 10,000 connections",
    "fds": "(iv) descriptors passed in",
    "limit": "(v) low descriptor limit",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uds", help="the uds binary (default: .build/release/uds, else .build/debug/uds)")
    parser.add_argument("--io", choices=["async", "threads"], default="async")
    parser.add_argument("--quick", action="store_true", help="a run of under about two minutes")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    args = parser.parse_args()

    uds = args.uds
    if not uds:
        for build in ("release", "debug"):
            candidate = os.path.join(ROOT, ".build", build, "uds")
            if os.access(candidate, os.X_OK):
                uds = candidate
                break
    if not uds or not os.access(uds, os.X_OK):
        sys.exit("soak: no uds binary; build one (swift build) or pass --uds PATH")
    chosen = args.only.split(",") if args.only else SCENARIOS
    for name in chosen:
        if name not in SCENARIOS:
            sys.exit(f"soak: unknown scenario {name} (one of {', '.join(SCENARIOS)})")

    if args.quick:
        scale = {"killed": (16, 10, 32 << 20), "storm": (10, 4 << 20, 50),
                 "10k": 10000, "fds": (8, 40, 250), "limit": 300}
    else:
        scale = {"killed": (48, 60, 512 << 20), "storm": (60, 16 << 20, 200),
                 "10k": 10000, "fds": (32, 400, 250), "limit": 300}
    raise_descriptor_limit(scale["10k"] + 4096)

    directory = tempfile.mkdtemp(prefix="soak-")
    rows, failed = [], False
    print(f"soak: {uds} echo-server --io {args.io}{' (quick)' if args.quick else ''}", file=sys.stderr)
    try:
        for name in chosen:
            started = time.monotonic()
            env, extra, count_path = {}, {}, None
            if name == "storm":
                shim = build_storm_shim(directory)
                if not shim:
                    rows.append((TITLES[name], "no C compiler to build the SIGUSR1 handler", "-", "-", "skipped"))
                    continue
                count_path = os.path.join(directory, "caught")
                env = {"LD_PRELOAD": shim, "SOAK_SIGNAL_COUNT": count_path}
            if name == "limit":
                extra["descriptor_limit"] = 256
            done, result, server = "", "held", None
            after_fds = after_rss = None
            try:
                server = Server(uds, args.io, directory, name, env=env, **extra)
                if name == "killed":
                    done = killed_clients(server, scale)
                elif name == "storm":
                    done = signal_storm(server, scale, count_path)
                elif name == "10k":
                    done = many_connections(server, scale)
                elif name == "fds":
                    done = passed_descriptors(server, scale)
                elif name == "limit":
                    done = low_descriptor_limit(server, scale)
                if not server.alive():
                    raise Failed(f"the server {server.describe_exit()} {server.log_tail()}")
                echo_once(server.path, b"still there?")
                after_fds = server.settle()
                after_rss = proc_rss_mib(server.pid)
                if after_fds is not None and after_fds > server.fds_before + 4:
                    raise Failed(f"the server still holds {after_fds} descriptors, {after_fds - server.fds_before} more than before")
                if server.rss_peak and server.rss_before and server.rss_peak - server.rss_before > 1024:
                    raise Failed(f"resident memory grew by {server.rss_peak - server.rss_before:.0f} MiB")
                if name == "storm":
                    done += f"; the handler caught {caught_signals(server, count_path)}"
            except (Failed, OSError) as error:
                failed = True
                state = f"; the server {server.describe_exit()}" if server and not server.alive() and "server" not in str(error) else ""
                result = f"FAILED: {error}{state}"
                if not done:
                    done = "(did not finish)"
            if server:
                server.stop()
                fds = f"{server.fds_before} → {server.fds_peak} → {after_fds if after_fds is not None else '-'}"
                rss = f"{server.rss_before:.1f} → {server.rss_peak:.1f} → " + (f"{after_rss:.1f}" if after_rss else "-")
            else:
                fds = rss = "-"
            rows.append((TITLES[name], f"{done} ({time.monotonic() - started:.0f}s)", fds, rss, result))
            print(f"soak: {name}: {result}", file=sys.stderr)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"| Scenario (--io {args.io}) | What was done | Server fds (before → peak → after) | RSS MiB (before → peak → after) | Result |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
