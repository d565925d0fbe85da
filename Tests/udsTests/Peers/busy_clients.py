"""Clients that keep a server busy until it closes them.

Usage: busy_clients.py PATH CONNECTIONS

Opens CONNECTIONS stream connections to PATH and, on each, sends 100 bytes,
waits for their echo, checks it and sends the next 100 (different) bytes, as
fast as the server answers: one thread, non-blocking sockets, selectors.
Prints `ready` once every connection has had an echo. Runs until the server
has closed every connection (end of stream or a reset), then prints
`closed N round trips` and exits 0. An echo that differs from what was sent
(wrong bytes, wrong order, bytes after the end) prints the mismatch and exits 1.
"""
import os
import selectors
import socket
import sys

path, count = sys.argv[1], int(sys.argv[2])
selector = selectors.DefaultSelector()


class Connection:
    def __init__(self, number):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.number = number
        self.sequence = 0
        self.expected = b''
        self.received = b''
        self.round_trips = 0
        self.send_next()
        selector.register(self.sock, selectors.EVENT_READ, self)

    def send_next(self):
        self.sequence += 1
        line = '{:08d}:{:08d}:'.format(self.number, self.sequence).encode()
        self.expected = (line * 10)[:100]
        self.received = b''
        try:
            self.sock.sendall(self.expected)
        except BlockingIOError:
            # 100 bytes into an empty socket always fit; a full one means the
            # server stopped reading, which the end of the stream will show.
            pass


connections = [Connection(number) for number in range(count)]
ready = False
open_count = count
while open_count:
    for key, _ in selector.select(timeout=60):
        connection = key.data
        try:
            data = connection.sock.recv(4096)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            data = b''
        if not data:
            selector.unregister(connection.sock)
            connection.sock.close()
            open_count -= 1
            continue
        connection.received += data
        if not connection.expected.startswith(connection.received):
            print('connection {}: echo {!r} does not match {!r}'.format(
                connection.number, connection.received, connection.expected), flush=True)
            sys.exit(1)
        if len(connection.received) == len(connection.expected):
            connection.round_trips += 1
            if not ready and all(c.round_trips for c in connections):
                ready = True
                print('ready', flush=True)
            try:
                connection.send_next()
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed by the server: the read side will say so

print('closed {} round trips'.format(sum(c.round_trips for c in connections)), flush=True)
