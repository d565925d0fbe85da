"""Clients that leave before reading their echo.

Usage: early_leavers.py PATH COUNT [AT_ONCE]

Makes COUNT stream connections to PATH, AT_ONCE (default 50) open at a time:
each sends a message and is closed without reading anything, so the server's
echo finds the client gone (EPIPE, or ECONNRESET if the echo arrived before
the close). Prints `done COUNT` at the end; any error is printed and the exit
status is 1.
"""
import socket
import sys

path = sys.argv[1]
count = int(sys.argv[2])
at_once = int(sys.argv[3]) if len(sys.argv) > 3 else 50

try:
    made = 0
    while made < count:
        batch = []
        for _ in range(min(at_once, count - made)):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.sendall(b'leaving before the echo')
            batch.append(sock)
        for sock in batch:
            sock.close()
        made += len(batch)
    print('done {}'.format(made), flush=True)
except OSError as error:
    print('early_leavers.py: {}'.format(error), file=sys.stderr, flush=True)
    sys.exit(1)
