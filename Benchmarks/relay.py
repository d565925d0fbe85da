#!/usr/bin/env python3
"""Relay throughput: uds relay (spliced and buffered) against socat, one run each.

A client pushes --megabytes through each relay (Unix socket to Unix socket)
to a sink that discards them; the sink times the bytes from the first to the
end of the stream. All in one run, so the machine's load is the same for all.

    swift build -c release --product uds
    python3 Benchmarks/relay.py --uds .build/release/uds --megabytes 512

Prints a Markdown table (MB/s, 1 MB = 10^6 bytes). Keep runs short on a
shared machine: the default moves 256 MB through each relay.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

CHUNK = 1 << 20


def sink(listener, result):
    connection, _ = listener.accept()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    first = None
    while True:
        count = connection.recv_into(view)
        if count == 0:
            break
        if first is None:
            first = time.perf_counter()
        total += count
    result.append((total, time.perf_counter() - (first or time.perf_counter())))
    connection.close()


def wait_for(path, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The first connection that succeeds is the client: the relays
        # under test serve just one.
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            return probe
        except OSError:
            probe.close()
            time.sleep(0.02)
    raise SystemExit(f"nothing listens at {path} after {timeout} s")


def measure(name, command, directory, megabytes):
    sink_path = os.path.join(directory, "sink.sock")
    relay_path = os.path.join(directory, "relay.sock")
    for path in (sink_path, relay_path):
        if os.path.exists(path):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sink_path)
    listener.listen(4)
    result = []
    relay = subprocess.Popen([arg.format(sink=sink_path, relay=relay_path) for arg in command],
                             stderr=subprocess.DEVNULL)
    try:
        client = wait_for(relay_path)
        receiver = threading.Thread(target=sink, args=(listener, result))
        receiver.start()
        payload = b"\x5a" * CHUNK
        for _ in range(megabytes * 1_000_000 // CHUNK):
            client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        receiver.join(timeout=30)
        client.close()
    finally:
        relay.terminate()
        relay.wait(timeout=5)
        listener.close()
    if not result:
        raise SystemExit(f"{name}: the sink never saw the end of the stream")
    total, seconds = result[0]
    return total, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uds", default=".build/release/uds", help="the uds binary")
    parser.add_argument("--megabytes", type=int, default=256, help="MB pushed through each relay")
    options = parser.parse_args()
    socat = shutil.which("socat")
    if socat is None:
        raise SystemExit("socat is not installed (apt-get install socat)")
    relays = [
        ("uds relay (splice)", [options.uds, "relay", "unix-listen:{relay}", "{sink}", "--once"]),
        ("uds relay --no-splice", [options.uds, "relay", "unix-listen:{relay}", "{sink}", "--once", "--no-splice"]),
        ("socat (default 8 KiB buffer)", [socat, "UNIX-LISTEN:{relay}", "UNIX-CONNECT:{sink}"]),
        ("socat -b 65536", [socat, "-b", "65536", "UNIX-LISTEN:{relay}", "UNIX-CONNECT:{sink}"]),
    ]
    directory = tempfile.mkdtemp(prefix="uds-relay-bench-")
    try:
        print(f"{options.megabytes} MB through each relay, Unix socket to Unix socket, "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} CPUs\n")
        print("| relay | MB | seconds | MB/s |")
        print("|---|---:|---:|---:|")
        for name, command in relays:
            total, seconds = measure(name, command, directory, options.megabytes)
            print(f"| {name} | {total / 1e6:.0f} | {seconds:.3f} | {total / 1e6 / seconds:.0f} |", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
