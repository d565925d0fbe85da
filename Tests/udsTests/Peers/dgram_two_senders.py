"""Two datagram senders, each bound to an address of its own, through one relay.

    python3 dgram_two_senders.py FRONT [PAUSE]

Each sends two messages and must get exactly its own back; with PAUSE, the
first sender sends once more after PAUSE seconds. Prints what each received.
"""
import os
import socket
import sys
import time

front = sys.argv[1]
pause = float(sys.argv[2]) if len(sys.argv) > 2 else None
senders = []
for name in ("alpha", "bravo"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(f"\0uds-test-{name}-{os.getpid()}")
    s.settimeout(10)
    senders.append((name, s))
for round in (1, 2):
    for name, s in senders:
        s.sendto(f"{name}-{round}".encode(), front)
for name, s in senders:
    got = sorted(s.recv(1000).decode() for _ in range(2))
    print(name, *got, flush=True)
if pause is not None:
    time.sleep(pause)
    name, s = senders[0]
    s.sendto(b"alpha-3", front)
    print(name, s.recv(1000).decode(), flush=True)
