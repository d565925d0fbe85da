"""Runs `uds echo-server` with a low descriptor limit and more clients than
it can hold, then checks that it kept serving.

usage: descriptor_limit.py UDS PATH TYPE IO LIMIT CLIENTS [SERVER_OPTION...]

Prints one line of key=value pairs: whether the server stayed alive, how
many clients were served or shed, whether a new client got its echo once
the others left, and how the server ended on SIGTERM.
"""
import os
import resource
import socket
import subprocess
import sys
import time

uds, path, kind, io, limit, count = sys.argv[1:7]
extra = sys.argv[7:]
limit, count = int(limit), int(count)
socket_type = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_SEQPACKET


def lower_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


resource.setrlimit(resource.RLIMIT_NOFILE, (max(4096, count * 2), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
server = subprocess.Popen(
    [uds, "echo-server", path, "--quiet", "--type", kind, "--io", io] + extra,
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=lower_limit)


def connect(timeout=10.0):
    client = socket.socket(socket.AF_UNIX, socket_type)
    client.settimeout(timeout)
    client.connect(path)
    return client


deadline = time.monotonic() + 30
while True:
    try:
        connect().close()
        break
    except OSError:
        if time.monotonic() > deadline or server.poll() is not None:
            print("ready=false")
            sys.exit(1)
        time.sleep(0.02)

clients = []
for _ in range(count):
    try:
        clients.append(connect())
    except OSError:
        pass  # A full backlog may refuse some; they count as not served.

served = shed = 0
for client in clients:
    try:
        client.settimeout(10)
        client.sendall(b"x")
        if client.recv(1) == b"x":
            served += 1
        else:
            shed += 1  # Closed by the server: end of stream.
    except OSError:
        shed += 1
alive = server.poll() is None
for client in clients:
    client.close()

# Once the others left, a new client is served again.
echo_after = False
deadline = time.monotonic() + 30
while not echo_after and time.monotonic() < deadline:
    try:
        client = connect()
        client.sendall(b"after")
        echo_after = client.recv(16) == b"after"
        client.close()
    except OSError:
        time.sleep(0.1)

alive_after = server.poll() is None
server.terminate()
try:
    _, errors = server.communicate(timeout=30)
except subprocess.TimeoutExpired:
    server.kill()
    _, errors = server.communicate()
lines = errors.decode(errors="replace").splitlines()
print(" ".join([
    f"alive={alive}", f"served={served}", f"shed={shed}", f"echo_after={echo_after}",
    f"alive_after={alive_after}", f"exit={server.returncode}", f"file_left={os.path.exists(path)}",
    f"stderr_lines={len(lines)}", f"shed_reported={any('closed a pending connection' in line for line in lines)}",
    f"shed_logged={any(line.startswith('uds: warning: out of descriptors: closed a pending connection') for line in lines)}",
]))
for line in lines[:20]:
    print("stderr:", line)
