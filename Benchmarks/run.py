#!/usr/bin/env python3
"""Runs every echo server under the same load and prints a table of medians.

    python3 Benchmarks/run.py [--reps 3] [--duration 3] [--servers c,udskit,...] [--client c,uds]

Servers: the C epoll server written here (the reference), the least an async
Swift server can do (Sources/bare-async-echo: epoll, a task per connection, a
bare continuation per wait, no UDSKit; on one thread, and with its loop on a
second), UDSKit's
`uds echo-server` (async on its loop thread; async with tasks on Swift's global
executor, to show what thread hops cost; thread per connection), SwiftNIO's echo
server on one event loop, Go's net package (goroutine per connection,
GOMAXPROCS=1) and Python asyncio.

The load comes from the C client (c/load_client.c): one epoll thread, cheaper
per round trip than any server here, so the servers are measured and not the
client. `--client uds` uses `uds bench` instead, `--client c,uds` both, side by
side. The client runs on CPU 0 and the server on CPU 1; the single-connection
latency case puts both on CPU 0, since across cores one round trip costs about as
much as waking an idle vCPU.

Cases: 100 B ping-pong at 10 and 100 connections (round trips/s, server CPU per
round trip), 100 B ping-pong on one connection on one core (p50, p99), streaming
in 64 KiB writes (MB/s, server CPU per MB), and half-close streaming (every byte
echoed, then the end of the stream). Each repetition starts the servers in a new
random order. Every number in the table is a median over the repetitions; every
ratio is the median of per-repetition ratios to the C server, measured in the same
repetition by the same client. Server CPU time is the sum of its threads' run times
(/proc/PID/task/TID/schedstat, nanoseconds) over the measured interval, or utime +
stime from /proc/PID/stat (clock ticks) when a thread ended within it.

Builds what it needs: the C server and client and the Go server into
Benchmarks/.build/bin (again when a source is newer), `uds` and the SwiftNIO
server with `swift build -c release`.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "Benchmarks")
BIN = os.path.join(BENCH, ".build", "bin")

# Servers whose threads the scheduler places: several loops on all CPUs.
UNPINNED = {"udskit-2loops"}
SERVERS = ["c", "swift-bare", "swift-bare-thread", "udskit", "udskit-handlers", "udskit-2loops", "udskit-global",
           "udskit-threads", "nio", "go", "python"]
CLIENTS = ["c", "uds"]


class Case:
    def __init__(self, key, name, mode, size, connections, same_core=False, transfers=1, stream_bytes=None):
        self.key, self.name, self.mode, self.size = key, name, mode, size
        self.connections, self.same_core, self.transfers = connections, same_core, transfers
        self.stream_bytes = stream_bytes  # per connection; None: --stream-bytes

    @property
    def streaming(self):
        return self.mode != "ping-pong"


CASES = [
    Case("pp10", "ping-pong 100 B, 10 conns", "ping-pong", 100, 10),
    Case("pp100", "ping-pong 100 B, 100 conns", "ping-pong", 100, 100),
    Case("latency", "ping-pong 100 B, 1 conn (same core)", "ping-pong", 100, 1, same_core=True),
    # A 1 GiB transfer takes a quarter of a second: measure it three times per
    # repetition, or noise decides the median.
    Case("stream", "stream 64 KiB writes", "stream", 65536, 1, transfers=3),
    Case("half-close", "half-close stream, 4 conns × 64 MiB", "half-close", 65536, 4, stream_bytes=64 << 20),
]


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def stale(binary, sources):
    return not os.path.exists(binary) or any(os.path.getmtime(s) > os.path.getmtime(binary) for s in sources)


def build(servers, clients):
    """Builds what the selected servers and clients need; returns the server commands and the binaries."""
    os.makedirs(BIN, exist_ok=True)
    c_dir = os.path.join(BENCH, "c")
    flags = ["-O2", "-std=c11", "-Wall", "-Wextra"]
    load_client = os.path.join(BIN, "load_client")
    echo_epoll = os.path.join(BIN, "echo_epoll")
    for binary, source, extra in ((load_client, "load_client.c", ["-pthread"]), (echo_epoll, "echo_epoll.c", [])):
        if stale(binary, [os.path.join(c_dir, source)]):
            print(f"building {os.path.basename(binary)}...", file=sys.stderr)
            subprocess.run(["cc", *flags, *extra, "-o", binary, os.path.join(c_dir, source)], check=True)

    echo_go = os.path.join(BIN, "echo-go")
    if "go" in servers:
        go_dir = os.path.join(BENCH, "go")
        if stale(echo_go, [os.path.join(go_dir, name) for name in ("echo.go", "go.mod")]):
            print("building echo-go...", file=sys.stderr)
            subprocess.run(["go", "build", "-o", echo_go, "."], cwd=go_dir, check=True)

    uds = os.path.join(ROOT, ".build", "release", "uds")
    if any(s.startswith("udskit") for s in servers) or "uds" in clients:
        print("building uds (release)...", file=sys.stderr)
        subprocess.run(["swift", "build", "-c", "release", "--product", "uds"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    nio = os.path.join(BENCH, ".build", "release", "nio-echo-server")
    bare = os.path.join(BENCH, ".build", "release", "bare-async-echo")
    if "nio" in servers or any(s.startswith("swift-bare") for s in servers):
        print("building the Benchmarks package (release)...", file=sys.stderr)
        subprocess.run(["swift", "build", "-c", "release"], cwd=BENCH, check=True, stdout=subprocess.DEVNULL)

    commands = {
        "c": [echo_epoll, "{path}"],
        # The least an async server can do on Swift's runtime, without UDSKit:
        # what is left of the gap to C is the runtime's suspension.
        "swift-bare": [bare, "{path}"],
        # The same with its loop on a second thread: a process with more than
        # one thread takes a file reference per system call.
        "swift-bare-thread": [bare, "{path}", "--loop-thread"],
        "udskit": [uds, "echo-server", "{path}", "--quiet"],
        "udskit-threads": [uds, "echo-server", "{path}", "--quiet", "--io", "threads"],
        # Readiness handlers on the loop: no task per connection, no task switch.
        "udskit-handlers": [uds, "echo-server", "{path}", "--quiet", "--io", "handlers"],
        # Two event loops (unpinned threads), connections spread over them.
        "udskit-2loops": [uds, "echo-server", "{path}", "--quiet", "--loops", "2"],
        # The same async server with its connection tasks on Swift's global
        # executor: every wake-up is a hop from the loop thread to the pool.
        "udskit-global": [uds, "echo-server", "{path}", "--quiet", "--executor", "global"],
        "nio": [nio, "{path}"],
        "go": [echo_go, "{path}"],
        "python": [sys.executable, os.path.join(BENCH, "python", "echo_asyncio.py"), "{path}"],
    }
    return commands, {"c": load_client, "uds": uds}


def pinned_to(cpus):
    return lambda: os.sched_setaffinity(0, set(cpus))


def pin_process(pid, cpu):
    """Moves every thread of a running process to one CPU (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except (ProcessLookupError, PermissionError):
            pass  # a thread that has just exited


def wait_until_listening(path, process, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {path} within {timeout} s")


def client_command(client, binaries, path, pid, case, cpus, args):
    stream_bytes = case.stream_bytes or args.stream_bytes
    if client == "c":
        command = [binaries["c"], "-m", case.mode, "-c", str(case.connections), "-s", str(case.size),
                   "-p", str(pid), "-a", ",".join(map(str, cpus))]
        if case.connections > 1 and args.client_threads > 1:
            command += ["-t", str(min(args.client_threads, case.connections))]
        if args.client_spin and not case.same_core:
            command += ["-B"]
        if case.streaming:
            command += ["-b", str(stream_bytes)]
        else:
            command += ["-d", str(args.duration), "-w", str(args.warmup)]
        return command + [path]
    command = [binaries["uds"], "bench", path, "--server-pid", str(pid), "--json", "--quiet"]
    if case.streaming:
        # uds bench streams on one connection and always half-closes at the end.
        return command + ["--mode", "stream", "--bytes", str(stream_bytes), "--write-size", str(case.size)]
    return command + ["--mode", "ping-pong", "--size", str(case.size), "--connections", str(case.connections),
                      "--duration", str(args.duration), "--warmup", str(args.warmup)]


def normalized(client, result, case, args):
    """The C client's field names for either client's JSON; server CPU per MB when streaming."""
    if client == "c":
        return result
    out = {key: result[key] for key in ("p50_us", "p99_us", "p999_us") if key in result}
    if case.streaming:
        out["connections"] = 1
        out["mb_per_s"] = result.get("megabytes_per_second")
        if "server_cpu_us_per_op" in result:  # per write-sized chunk
            megabytes = (case.stream_bytes or args.stream_bytes) / 1e6
            out["server_cpu_us_per_op"] = result["server_cpu_us_per_op"] * result["operations"] / megabytes
    else:
        out["rtt_per_s"] = result.get("operations_per_second")
        if "server_cpu_us_per_op" in result:
            out["server_cpu_us_per_op"] = result["server_cpu_us_per_op"]
    return out


def run_client(client, binaries, path, pid, case, cpus, args):
    command = client_command(client, binaries, path, pid, case, cpus, args)
    timeout = (120 if case.streaming else args.duration + args.warmup) + 60
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                preexec_fn=pinned_to(cpus))
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]}
    return normalized(client, json.loads(result.stdout.strip().splitlines()[-1]), case, args)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per ping-pong case")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--skip", default="", help="servers to leave out, e.g. go")
    parser.add_argument("--client", default="c", help="c (load_client.c), uds (uds bench), or c,uds")
    parser.add_argument("--cases", default=",".join(case.key for case in CASES))
    parser.add_argument("--stream-bytes", type=parse_size, default=1 << 30, help="bytes per streaming transfer")
    parser.add_argument("--client-cpu", type=lambda text: [int(cpu) for cpu in text.split(",")], default=[0],
                        help="CPU, or a list: C client thread i runs on the i-th (the latency case uses the first)")
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-threads", type=int, default=1, help="C client threads for the multi-connection cases")
    parser.add_argument("--client-spin", action="store_true",
                        help="the C client busy-polls in the cases where it has its own CPU")
    parser.add_argument("--json", help="also write every result here, one JSON line each")
    args = parser.parse_args()

    skipped = {s for s in args.skip.split(",") if s}
    servers = [s for s in args.servers.split(",") if s and s not in skipped]
    clients = [c for c in args.client.split(",") if c]
    cases = [case for key in args.cases.split(",") if key for case in CASES if case.key == key]
    for name, chosen, known in (("server", servers, SERVERS), ("client", clients, CLIENTS),
                                ("case", [c.key for c in cases] or ["none"], [c.key for c in CASES])):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            sys.exit(f"unknown {name}: {', '.join(unknown)} (choose from {', '.join(known)})")
    missing = {cpu for cpu in args.client_cpu + [args.server_cpu] if cpu not in os.sched_getaffinity(0)}
    if missing:
        sys.exit(f"CPU {', '.join(map(str, sorted(missing)))} is not available to this process")
    tools = ["cc"] + (["go"] if "go" in servers else [])
    tools += ["swift"] if any(s.startswith(("udskit", "swift-bare")) or s == "nio" for s in servers) or "uds" in clients else []
    for tool in tools:
        if shutil.which(tool) is None:
            hint = "; install Go, or leave its server out with --skip go" if tool == "go" else ""
            sys.exit(f"run.py needs {tool}{hint}")

    commands, binaries = build(servers, clients)
    workdir = tempfile.mkdtemp(prefix="udsbench-")
    log = open(args.json, "w") if args.json else None
    results = []
    try:
        for rep in range(args.reps):
            order = servers[:]
            random.shuffle(order)  # spread slow phases of a shared machine over all servers
            for server in order:
                results += run_server(server, commands[server], rep, cases, clients, binaries, workdir, args, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if log:
            log.close()
    print_table(results, servers, clients, cases, args)


def run_server(server, command, rep, cases, clients, binaries, workdir, args, log):
    path = os.path.join(workdir, f"{server}.sock")
    env = dict(os.environ, GOMAXPROCS="1") if server == "go" else None
    # A server with more than one loop is left unpinned (the scheduler places
    # its threads), except where a case puts everything on one core.
    unpinned = server in UNPINNED
    server_cpus = sorted(os.sched_getaffinity(0)) if unpinned else [args.server_cpu]
    with open(os.path.join(workdir, f"{server}.log"), "w") as errors:
        process = subprocess.Popen([part.format(path=path) for part in command], env=env, stdout=subprocess.DEVNULL,
                                   stderr=errors, preexec_fn=pinned_to(server_cpus))
    results = []
    try:
        try:
            wait_until_listening(path, process)
        except RuntimeError as error:
            with open(os.path.join(workdir, f"{server}.log")) as errors:
                last = (errors.read().strip().splitlines() or [""])[-1]
            print(f"rep {rep + 1} {server}: {error} {last}", file=sys.stderr)
            return [{"rep": rep + 1, "server": server, "client": client, "case": case.key, "error": str(error)}
                    for case in cases for client in clients]
        for case in cases:
            cpus = args.client_cpu[:1] if case.same_core else args.client_cpu
            if case.same_core or not unpinned:
                pin_process(process.pid, cpus[0] if case.same_core else args.server_cpu)
            for client in clients:
                for _ in range(case.transfers):
                    outcome = run_client(client, binaries, path, process.pid, case, cpus, args)
                    record = {"rep": rep + 1, "server": server, "client": client, "case": case.key, **outcome}
                    results.append(record)
                    if log:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    print(f"rep {rep + 1} {server:15} {client:4} {label(case, args):38} {summary(outcome)}",
                          file=sys.stderr)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if os.path.exists(path):
            os.unlink(path)
    return results


def summary(outcome):
    if "error" in outcome:
        return "FAILED: " + outcome["error"]
    parts = []
    for key, fmt in (("rtt_per_s", "{:,.0f} rt/s"), ("mb_per_s", "{:,.0f} MB/s"), ("p50_us", "p50 {:.1f} µs"),
                     ("p99_us", "p99 {:.1f} µs"), ("server_cpu_us_per_op", "server {:.2f} µs/op"),
                     ("server_cpu_util", "server busy {:.2f}"), ("client_cpu_util", "client busy {:.2f}")):
        if outcome.get(key) is not None:
            parts.append(fmt.format(outcome[key]))
    return ", ".join(parts)


def per_rep(samples, key):
    """{rep: median of that repetition's values} for one server, case and client."""
    by_rep = {}
    for sample in samples:
        if sample.get(key) is not None:
            by_rep.setdefault(sample["rep"], []).append(sample[key])
    return {rep: statistics.median(values) for rep, values in by_rep.items()}


def median_and_ratio(samples, reference, key):
    values = per_rep(samples, key)
    if not values:
        return None, None
    base = per_rep(reference, key)
    ratios = [values[rep] / base[rep] for rep in values if base.get(rep)]
    return statistics.median(values.values()), (statistics.median(ratios) if ratios else None)


def print_table(results, servers, clients, cases, args):
    when = datetime.date.today().isoformat()
    command = " ".join(["python3 Benchmarks/run.py"] + sys.argv[1:])
    print(f"Run on {when}: `{command}`; medians of {args.reps} repetitions; ratios are medians of "
          f"per-repetition ratios to the C epoll server with the same client. Server µs/op is per round trip "
          f"(ping-pong) or per MB echoed (streaming); busy is CPU time over wall time (server / C client).\n")
    print("| case | server | client | result | × C | p50 µs | × C | p99 µs | server µs/op | × C | busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        key = "mb_per_s" if case.streaming else "rtt_per_s"
        unit = "MB/s" if case.streaming else "rt/s"
        for server in servers:
            for client in clients:
                def matching(name):
                    return [r for r in results if r["server"] == name and r["client"] == client and r["case"] == case.key]
                samples, reference = matching(server), matching("c")
                failed = [s["error"] for s in samples if "error" in s]
                if failed:
                    print(f"| {label(case, args)} | {server} | {client} | FAILED ({len(failed)} of {len(samples)}): "
                          f"{failed[0]} | | | | | | | |")
                    continue
                cells = []
                value, ratio = median_and_ratio(samples, reference, key)
                result = "" if value is None else f"{value:,.0f} {unit}"
                if case.mode == "half-close" and samples:
                    result = f"ok, {result}"  # every byte came back, then the end of the stream
                cells += [result, fmt_ratio(ratio)]
                if case.streaming:
                    cells += ["", "", ""]
                else:
                    p50, p50_ratio = median_and_ratio(samples, reference, "p50_us")
                    p99, _ = median_and_ratio(samples, reference, "p99_us")
                    cells += [fmt(p50, "{:.1f}"), fmt_ratio(p50_ratio), fmt(p99, "{:.1f}")]
                cpu, cpu_ratio = median_and_ratio(samples, reference, "server_cpu_us_per_op")
                cells += [fmt(cpu, "{:.2f}"), fmt_ratio(cpu_ratio)]
                server_busy, _ = median_and_ratio(samples, reference, "server_cpu_util")
                client_busy, _ = median_and_ratio(samples, reference, "client_cpu_util")
                busy = f"{server_busy:.2f} / {client_busy:.2f}" if None not in (server_busy, client_busy) else ""
                cells.append(busy)
                print(f"| {label(case, args)} | {server} | {client} | " + " | ".join(cells) + " |")


def label(case, args):
    if not case.streaming or case.stream_bytes:
        return case.name
    size = args.stream_bytes
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % scale == 0:
            return f"{case.name}, {size // scale} {unit}"
    return f"{case.name}, {size} B"


def fmt(value, spec):
    return "" if value is None else spec.format(value)


def fmt_ratio(ratio):
    return "" if ratio is None else f"{ratio:.2f}×"


if __name__ == "__main__":
    main()
