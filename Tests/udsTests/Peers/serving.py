"""Runs a listening `uds` command (listen, recv, recv-fd, relay) under the
real activator, systemd-socket-activate, or with --allow-uid/--allow-gid,
with a client against it; prints one JSON object of what happened.

usage: serving.py UDS ACTIVATOR DIR CASE
CASE: listen | recv | recv-fd | relay |
      refuse-listen | refuse-recv | refuse-recv-fd | refuse-relay | admit-listen
"""
import json
import os
import socket
import subprocess
import sys
import time

from children import stop, unblocked, wait_for

uds, activator, directory, case = sys.argv[1:5]
OTHER_ID = "4242"  # a user and group this test does not run as


def start(command):
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=unblocked)


def activated(flags, path, command):
    return start([activator, *flags, "-l", path, uds, *command])


def wait_for_stderr_text(process, text, timeout=30):
    """Reads the process's standard error until `text` shows (or it ends)."""
    seen = b""
    os.set_blocking(process.stderr.fileno(), False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = process.stderr.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            seen += chunk
            if text.encode() in seen:
                break
        elif process.poll() is not None:
            break
        time.sleep(0.02)
    os.set_blocking(process.stderr.fileno(), True)
    return seen.decode(errors="replace")


def wait_listening(path, process):
    """Waits until /proc/net/unix lists `path` as listening (__SO_ACCEPTCON), without connecting:
    the file exists from bind(), before listen(), and a connect in between is refused."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with open("/proc/net/unix") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                    return True
        time.sleep(0.02)
    return False


def run(command, timeout=30):
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, preexec_fn=unblocked)
        return [done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")]
    except subprocess.TimeoutExpired:
        return ["timeout", "", ""]


def finish(process):
    """Waits for a command that ends by itself (one message, one connection), then stops it if it did not."""
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    return stop(process)


def stream_client(path, data):
    """Connects, sends `data`, half-closes, and reads to the end: what the server sent, or 'refused' on EOF at once."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(30)
    client.connect(path)
    received = b""
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        while True:
            chunk = client.recv(4096)
            if not chunk:
                break
            received += chunk
    except (BrokenPipeError, ConnectionResetError):
        pass
    client.close()
    return received.decode(errors="replace")


result = {"case": case}
path = os.path.join(directory, "served.sock")
if case == "listen":
    server = activated([], path, ["listen", "ignored.sock"])
    result["ready"] = wait_listening(path, server)
    result["client"] = stream_client(path, b"hello from the client\n")
    result["exit"], result["stdout"], result["stderr"] = stop(server)
    result["file_left"] = os.path.exists(path)
elif case == "recv":
    server = activated(["--datagram"], path, ["recv", "ignored.sock", "--count", "1", "--raw"])
    result["ready"] = wait_for(path, server)
    result["client"] = run([uds, "send", path, "one datagram"])
    result["exit"], result["stdout"], result["stderr"] = finish(server)
    result["file_left"] = os.path.exists(path)
elif case == "recv-fd":
    handed = os.path.join(directory, "handed.txt")
    with open(handed, "w") as f:
        f.write("the handed file\n")
    server = activated([], path, ["recv-fd", "ignored.sock"])
    result["ready"] = wait_listening(path, server)
    result["client"] = run([uds, "send-fd", path, handed])
    result["exit"], result["stdout"], result["stderr"] = finish(server)
    result["file_left"] = os.path.exists(path)
elif case == "relay":
    echo_path = os.path.join(directory, "echo.sock")
    echo = start([uds, "echo-server", echo_path, "--quiet"])
    wait_listening(echo_path, echo)
    server = activated([], path, ["relay", "unix-listen:ignored.sock", echo_path])
    result["ready"] = wait_listening(path, server)
    result["client"] = run([uds, "echo-client", path, "--message", "relayed"])
    result["exit"], result["stdout"], result["stderr"] = stop(server)
    stop(echo)
    result["file_left"] = os.path.exists(path)
elif case.startswith("refuse-") or case == "admit-listen":
    command = case.split("-", 1)[1]
    allowed = str(os.getuid()) if case == "admit-listen" else OTHER_ID
    access = ["--allow-uid", allowed] if command != "recv-fd" else ["--allow-gid", OTHER_ID]
    access += ["--log-level", "notice"]
    if command == "listen":
        server = start([uds, "listen", path, *access])
    elif command == "recv":
        server = start([uds, "recv", path, "--type", "seqpacket", *access])
    elif command == "recv-fd":
        server = start([uds, "recv-fd", path, *access])
    else:
        echo_path = os.path.join(directory, "echo.sock")
        echo = start([uds, "echo-server", echo_path, "--quiet"])
        wait_listening(echo_path, echo)
        server = start([uds, "relay", "unix-listen:" + path, echo_path, *access])
    # The file appears at bind, before listen: wait until the kernel says it listens.
    result["ready"] = wait_listening(path, server)
    earlier = ""
    if command == "recv":
        client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client.settimeout(30)
        client.connect(path)
        try:
            client.send(b"a message")
            result["client"] = client.recv(100).decode(errors="replace")
        except (BrokenPipeError, ConnectionResetError) as error:
            result["client"] = type(error).__name__
        client.close()
    else:
        result["client"] = stream_client(path, b"let me in\n")
    if case == "admit-listen":
        # A single-connection listen ends when its peer has gone.
        result["exit"], result["stdout"], result["stderr"] = stop(server, earlier)
    else:
        earlier += wait_for_stderr_text(server, "does not admit the peer")
        result["running"] = server.poll() is None
        result["exit"], result["stdout"], result["stderr"] = stop(server, earlier)
    if command == "relay":
        stop(echo)
print(json.dumps(result))
