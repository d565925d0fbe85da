"""Runs `uds echo-server` under the real activator, systemd-socket-activate,
and a `uds echo-client` against it; prints one JSON object of what happened.

usage: activation.py UDS ACTIVATOR DIR CASE
CASE: stream | dgram | seqpacket | accept | named | ambiguous
"""
import json
import os
import subprocess
import sys
import time

from children import stop, unblocked, wait_for

uds, activator, directory, case = sys.argv[1:5]


def start(flags, sockets, extra=()):
    command = [activator, *flags]
    for path in sockets:
        command += ["-l", path]
    command += [uds, "echo-server", "--quiet", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=unblocked)


def client(path, message, kind="stream"):
    command = [uds, "echo-client", path, "--message", message]
    if kind != "stream":
        command += ["--type", kind]
    try:
        done = subprocess.run(command, capture_output=True, timeout=30, preexec_fn=unblocked)
        return done.returncode, done.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return "timeout", ""


result = {"case": case}
flags = {"dgram": ["--datagram"], "seqpacket": ["--seqpacket"], "accept": ["--accept"]}.get(case, [])
if case in ("stream", "dgram", "seqpacket"):
    path = os.path.join(directory, f"{case}.sock")
    server = start(flags, [path])
    result["ready"] = wait_for(path, server)
    result["client"] = client(path, "activated", case)
    result["exit"], result["stdout"], result["stderr"] = stop(server)
    result["file_left"] = os.path.exists(path)
elif case == "accept":
    path = os.path.join(directory, "inetd.sock")
    server = start(flags, [path])
    result["ready"] = wait_for(path, server)
    result["clients"] = [client(path, f"round {n}") for n in range(2)]
    result["exit"], result["stdout"], result["stderr"] = stop(server)
elif case == "named":
    alpha, beta = os.path.join(directory, "alpha.sock"), os.path.join(directory, "beta.sock")
    server = start(["--fdname=alpha:beta"], [alpha, beta], ["--activated", "beta"])
    result["ready"] = wait_for(beta, server)
    result["client"] = client(beta, "to beta")
    result["exit"], result["stdout"], result["stderr"] = stop(server)
elif case == "logged":
    alpha, beta = os.path.join(directory, "alpha.sock"), os.path.join(directory, "beta.sock")
    server = start(["--fdname=alpha:beta"], [alpha, beta], ["--activated", "beta", "--log-level", "info"])
    result["ready"] = wait_for(beta, server)
    result["client"] = client(beta, "logged")
    result["exit"], result["stdout"], result["stderr"] = stop(server)
    result["file_left"] = os.path.exists(beta)
elif case == "ambiguous":
    gamma, delta = os.path.join(directory, "gamma.sock"), os.path.join(directory, "delta.sock")
    server = start(["--fdname=gamma:delta"], [gamma, delta])
    result["ready"] = wait_for(gamma, server)
    result["client"] = client(gamma, "which")
    result["exit"], result["stdout"], result["stderr"] = stop(server)
print(json.dumps(result))
