"""What the peer drivers share: starting children with signals unblocked,
waiting for a socket file, stopping a server with SIGTERM."""
import os
import signal
import subprocess
import time


def unblocked():
    # Children inherit the blocked-signal mask of whoever started us; an
    # activator must get SIGCHLD to reap its --accept children, and SIGTERM
    # must reach the commands.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def wait_for(path, process):
    """Waits until `path` exists (or `process` ended): True if it does."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.exists(path):
            return True
        time.sleep(0.02)
    return False


def stop(process, earlier_stderr=""):
    """SIGTERM (if still running), then (status, stdout, stderr)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out.decode(errors="replace"), earlier_stderr + err.decode(errors="replace")
