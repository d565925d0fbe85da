#!/usr/bin/env python3
"""Holds N concurrent connections to an echo server and reports its memory per idle connection.

    python3 Benchmarks/scale.py [--connections 10000] [--server "uds echo-server {path} --quiet"]

Starts the server (by default the release build of `uds echo-server`, on the
async API), opens N connections and keeps them all open, checks that every one
echoes a message of its own, and reads the server's resident memory
(VmRSS in /proc/PID/status) before and after: the growth divided by N is the
memory per idle connection. Raises this process's descriptor limit to the hard
limit; the server is started with the same limit.
"""
import argparse
import os
import resource
import selectors
import shlex
import socket
import subprocess
import sys
import tempfile
import time

from run import wait_until_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--server", default=os.path.join(ROOT, ".build", "release", "uds") + " echo-server {path} --quiet")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + 100  # this process holds one end of each connection
    if hard != resource.RLIM_INFINITY and hard < wanted:
        sys.exit(f"the hard descriptor limit {hard} is below {wanted}; raise it (ulimit -Hn) first")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))

    workdir = tempfile.mkdtemp(prefix="udsscale-")
    path = os.path.join(workdir, "echo.sock")
    server = subprocess.Popen(shlex.split(args.server.format(path=path)), stdout=subprocess.DEVNULL)
    try:
        # Listening, not just bound (the file exists from bind on). The probe's
        # connection has ended before the first reading.
        try:
            wait_until_listening(path, server)
        except RuntimeError as failure:
            sys.exit(f"the server did not start: {failure}")
        time.sleep(0.3)
        before = rss_kib(server.pid)

        sockets = []
        for index in range(args.connections):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(path)
            sockets.append(client)
        time.sleep(1.0)
        idle = rss_kib(server.pid)

        # Every connection echoes its own message.
        selector = selectors.DefaultSelector()
        for index, client in enumerate(sockets):
            message = f"connection {index}\n".encode()
            client.sendall(message)
            client.setblocking(False)
            selector.register(client, selectors.EVENT_READ, (index, message, bytearray()))
        pending = len(sockets)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                index, message, received = key.data
                received += key.fileobj.recv(4096)
                if len(received) >= len(message):
                    if bytes(received) != message:
                        sys.exit(f"connection {index} got {bytes(received)!r}, sent {message!r}")
                    selector.unregister(key.fileobj)
                    pending -= 1
        if pending:
            sys.exit(f"{pending} of {len(sockets)} connections got no echo within 60 s")
        after_echo = rss_kib(server.pid)

        growth = idle - before
        print(f"{args.connections} concurrent connections, every one echoed correctly")
        print(f"server RSS: {before} KiB before, {idle} KiB with all connected and idle, "
              f"{after_echo} KiB after each echoed once")
        print(f"memory per idle connection: {growth * 1024 / args.connections:.0f} bytes "
              f"(RSS growth {growth} KiB / {args.connections})")
        for client in sockets:
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
