#!/usr/bin/env python3
"""Runs every echo server under the same load and prints a table of medians.

    python3 Benchmarks/run.py [--reps 3] [--duration 3] [--servers c,udskit,nio,python]

Servers: the C epoll server written here (the reference), UDSKit's
`uds echo-server` (async on its loop thread; async with tasks on Swift's global
executor, to show what thread hops cost; thread per connection), SwiftNIO's echo server
on one event loop, and Python asyncio. The load client is `uds bench` for all
of them. Multi-connection and streaming cases pin the server to CPU 0 and the
client to CPU 1; single-connection latency cases pin both to CPU 0, since
across cores one round trip costs about as much as waking an idle vCPU.

Every number in the table is the median of the repetitions, and every ratio
is to the C server measured in the same run. Server CPU time per operation
comes from /proc/PID/stat over the measured interval.
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

# name, mode, size, connections, same core
CASES = [
    ("ping-pong 16 B, 1 conn (same core)", "ping-pong", 16, 1, True),
    ("ping-pong 100 B, 1 conn (same core)", "ping-pong", 100, 1, True),
    ("ping-pong 4096 B, 1 conn (same core)", "ping-pong", 4096, 1, True),
    ("ping-pong 100 B, 10 conns", "ping-pong", 100, 10, False),
    ("ping-pong 100 B, 100 conns", "ping-pong", 100, 100, False),
    ("stream 64 KiB writes, 1 GiB", "stream", 65536, 1, False),
]


STREAM_TRANSFERS = 3


def build(workdir):
    print("building (release)...", file=sys.stderr)
    subprocess.run(["swift", "build", "-c", "release", "--product", "uds"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["swift", "build", "-c", "release"], cwd=BENCH, check=True, stdout=subprocess.DEVNULL)
    c_server = os.path.join(workdir, "echo_epoll")
    subprocess.run(["cc", "-O2", "-o", c_server, os.path.join(BENCH, "c", "echo_epoll.c")], check=True)
    uds = os.path.join(ROOT, ".build", "release", "uds")
    nio = os.path.join(BENCH, ".build", "release", "nio-echo-server")
    return {
        "c": [c_server, "{path}"],
        "udskit": [uds, "echo-server", "{path}", "--quiet"],
        "udskit-threads": [uds, "echo-server", "{path}", "--quiet", "--io", "threads"],
        # The same async server with its connection tasks on Swift's global
        # executor: every wake-up is a hop from the loop thread to the pool.
        "udskit-global": [uds, "echo-server", "{path}", "--quiet", "--executor", "global"],
        "nio": [nio, "{path}"],
        "python": [sys.executable, os.path.join(BENCH, "python", "echo_asyncio.py"), "{path}"],
    }, uds


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


def run_case(uds, path, pid, case, duration, warmup):
    name, mode, size, connections, same_core = case
    command = ["taskset", "-c", "0" if same_core else "1", uds, "bench", path, "--mode", mode,
               "--server-pid", str(pid), "--json", "--quiet"]
    if mode == "ping-pong":
        command += ["--size", str(size), "--connections", str(connections),
                    "--duration", str(duration), "--warmup", str(warmup)]
    else:
        command += ["--bytes", str(1 << 30), "--write-size", str(size)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 60)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--servers", default="c,udskit,udskit-global,udskit-threads,nio,python")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    for tool in ("taskset", "cc", "swift"):
        if shutil.which(tool) is None:
            sys.exit(f"run.py needs {tool}")

    workdir = tempfile.mkdtemp(prefix="udsbench-")
    commands, uds = build(workdir)
    servers = [s for s in args.servers.split(",") if s]
    results = {server: {case[0]: [] for case in CASES} for server in servers}
    try:
        for rep in range(args.reps):
            order = servers[:]
            random.shuffle(order)  # spread slow phases of a shared machine over all servers
            for server in order:
                path = os.path.join(workdir, f"{server}.sock")
                command = ["taskset", "-c", "0"] + [part.format(path=path) for part in commands[server]]
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_until_listening(path, process)
                    for case in CASES:
                        # A 1 GiB transfer takes a quarter of a second: measure it
                        # three times per repetition, or noise decides the median.
                        for _ in range(STREAM_TRANSFERS if case[1] == "stream" else 1):
                            outcome = run_case(uds, path, process.pid, case, args.duration, args.warmup)
                            results[server][case[0]].append(outcome)
                            print(f"rep {rep + 1} {server:15} {case[0]:40} {outcome}", file=sys.stderr)
                finally:
                    process.terminate()
                    try:
                        process.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        process.kill()
                    if os.path.exists(path):
                        os.unlink(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    print_table(results, servers, args)


def median_of(samples, key):
    values = [sample[key] for sample in samples if key in sample]
    return statistics.median(values) if values else None


def print_table(results, servers, args):
    when = datetime.date.today().isoformat()
    print(f"Run on {when}: `python3 Benchmarks/run.py --reps {args.reps} --duration {args.duration}`; "
          f"medians of {args.reps} repetitions ({args.reps * STREAM_TRANSFERS} transfers for streaming); "
          f"ratios are to the C epoll server in the same run.\n")
    print("| case | server | result | ratio to C | p50 µs | ratio to C | server CPU µs/op | ratio to C |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        name, mode = case[0], case[1]
        key = "megabytes_per_second" if mode == "stream" else "operations_per_second"
        unit = "MB/s" if mode == "stream" else "rt/s"
        reference = {k: median_of(results.get("c", {}).get(name, []), k)
                     for k in (key, "p50_us", "server_cpu_us_per_op")}
        for server in servers:
            samples = results[server][name]
            errors = [s["error"] for s in samples if "error" in s]
            if errors:
                print(f"| {name} | {server} | FAILED: {errors[0]} | | | | | |")
                continue
            cells = []
            for k, fmt in ((key, "{:,.0f} " + unit), ("p50_us", "{:.1f}"), ("server_cpu_us_per_op", "{:.2f}")):
                value = median_of(samples, k)
                if value is None:
                    cells += ["", ""]
                    continue
                ratio = f"{value / reference[k]:.2f}×" if reference.get(k) else ""
                cells += [fmt.format(value), ratio]
            print(f"| {name} | {server} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
