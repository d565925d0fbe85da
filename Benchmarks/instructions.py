#!/usr/bin/env python3
"""Counts the user-space instructions an echo server spends per round trip.

    python3 Benchmarks/instructions.py [--connections 10] [--servers udskit,udskit-handlers,c,swift-bare] [--functions 25]

CPU time on a shared virtual machine moves by 10-20% between runs, which hides
the change one optimisation makes. This counts instructions instead: each
server runs under valgrind's callgrind (user space only, deterministic up to
scheduling), driven by the C load client for two durations; the difference in
instructions divided by the difference in round trips is the cost of one round
trip, with start-up and shutdown cancelled out. The kernel's share, the same
for every server, is not counted.

With `--functions N`, also lists the N functions that spend the most per
round trip (their own instructions, from `callgrind_annotate` of both runs,
differenced the same way), with the demangled names.

Needs valgrind (`apt-get install valgrind`). Valgrind 3.19 cannot read the
DWARF 5 that Swift emits, so the binary is copied without debug information
(`strip -g`) first. Run it on a quiet machine: the server is 20-50x slower
under valgrind, so the client is never the limit here.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from run import wait_until_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "Benchmarks", ".build", "bin")


def servers(uds, bare):
    return {
        "swift-bare": [bare, "{path}"],
        "udskit": [uds, "echo-server", "{path}", "--quiet"],
        "udskit-handlers": [uds, "echo-server", "{path}", "--quiet", "--io", "handlers"],
        "c": [os.path.join(BIN, "echo_epoll"), "{path}"],
    }


def measure(command, connections, seconds, workdir, out):
    """Round trips and total instructions of one run; callgrind's counts stay in `out`."""
    path = os.path.join(workdir, "echo.sock")
    for stale in (path, out):
        if os.path.exists(stale):
            os.unlink(stale)
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + [a.format(path=path) for a in command],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Listening, not just bound (the file exists from bind on); slow under valgrind.
    try:
        wait_until_listening(path, server, timeout=60)
    except RuntimeError as failure:
        sys.exit(f"{failure}: {' '.join(command)}")
    client = subprocess.run(
        [os.path.join(BIN, "load_client"), "-c", str(connections), "-s", "100", "-d", str(seconds), "-w", "0.2", path],
        capture_output=True, text=True, check=True)
    round_trips = json.loads(client.stdout)["round_trips"]
    server.send_signal(2)  # SIGINT: the servers exit cleanly, and callgrind writes its counts.
    server.wait(timeout=60)
    with open(out) as counts:
        for line in counts:
            if line.startswith(("summary:", "totals:")):
                return round_trips, int(line.split()[1])
    sys.exit(f"no instruction count from {' '.join(command)}")


def instructions_by_function(out):
    """Each function's own instructions in one callgrind run."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out], capture_output=True, text=True, check=True).stdout
    counts = {}
    for line in annotated.splitlines():
        match = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if match and ":" in match.group(2):
            name = match.group(2).rsplit(" [", 1)[0].split(":", 1)[1]
            counts[name] = counts.get(name, 0) + int(match.group(1).replace(",", ""))
    return counts


def demangle(names):
    if shutil.which("swift") is None:
        return names
    result = subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(names), capture_output=True, text=True)
    lines = result.stdout.splitlines()
    return lines if result.returncode == 0 and len(lines) == len(names) else names


def print_functions(short_out, long_out, round_trips, limit):
    short, long = instructions_by_function(short_out), instructions_by_function(long_out)
    per_round_trip = {name: (long.get(name, 0) - short.get(name, 0)) / round_trips for name in set(short) | set(long)}
    top = sorted(per_round_trip.items(), key=lambda item: -item[1])[:limit]
    print("| instructions per round trip | function |")
    print("|---|---|")
    for (_, cost), name in zip(top, demangle([name for name, _ in top])):
        print(f"| {cost:,.0f} | {name[:160]} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--servers", default="udskit,udskit-handlers,c")
    parser.add_argument("--uds", default=os.path.join(ROOT, ".build", "release", "uds"))
    parser.add_argument("--short", type=float, default=2.0, help="seconds of the shorter run")
    parser.add_argument("--long", type=float, default=5.0, help="seconds of the longer run")
    parser.add_argument("--functions", type=int, default=0, help="list the N costliest functions per round trip")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    for tool in (args.uds, os.path.join(BIN, "load_client"), os.path.join(BIN, "echo_epoll")):
        if not os.path.exists(tool):
            sys.exit(f"{tool} is missing: build it first (swift build -c release; python3 Benchmarks/run.py builds the C tools)")

    with tempfile.TemporaryDirectory(prefix="udsinstr-") as workdir:
        stripped = os.path.join(workdir, "uds")
        subprocess.run(["strip", "-g", "-o", stripped, args.uds], check=True)
        bare = os.path.join(workdir, "bare-async-echo")
        bare_built = os.path.join(ROOT, "Benchmarks", ".build", "release", "bare-async-echo")
        if "swift-bare" in args.servers.split(","):
            if not os.path.exists(bare_built):
                sys.exit(f"{bare_built} is missing: swift build -c release --package-path Benchmarks")
            subprocess.run(["strip", "-g", "-o", bare, bare_built], check=True)
        table = servers(stripped, bare)
        print(f"| server | instructions per round trip ({args.connections} connections) |")
        print("|---|---|")
        breakdowns = []
        for name in args.servers.split(","):
            short_out, long_out = os.path.join(workdir, f"{name}.short.out"), os.path.join(workdir, f"{name}.long.out")
            short = measure(table[name], args.connections, args.short, workdir, short_out)
            long = measure(table[name], args.connections, args.long, workdir, long_out)
            per_round_trip = (long[1] - short[1]) / (long[0] - short[0])
            print(f"| {name} | {per_round_trip:,.0f} |", flush=True)
            breakdowns.append((name, short_out, long_out, long[0] - short[0]))
        for name, short_out, long_out, round_trips in breakdowns if args.functions else []:
            print(f"\n{name}:\n")
            print_functions(short_out, long_out, round_trips, args.functions)


if __name__ == "__main__":
    main()
