"""A SOCK_DGRAM echo client that binds a pid-named address of its own.

Usage: dgram_client.py [PATH] [MESSAGE]

Binds PATH.py-client-PID (next to the server's PATH, default ./uds_socket) so
the server can answer, sends MESSAGE (default: the classic 41-byte message),
waits up to 10 seconds for the reply, prints it as `received b'...'` and
removes its socket file. Any error is printed and the exit status is 1.
"""
import os
import socket
import sys

server_address = sys.argv[1] if len(sys.argv) > 1 else './uds_socket'
text = sys.argv[2] if len(sys.argv) > 2 else 'This is the message. It will be repeated.'
message = text.encode()
local_address = '{}.py-client-{}'.format(server_address, os.getpid())

sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
status = 0
try:
    print('connecting to {}'.format(server_address), flush=True)
    sock.bind(local_address)
    print('bound to {}'.format(local_address), flush=True)
    sock.settimeout(10)
    print('sending {!r}'.format(message), flush=True)
    sock.sendto(message, server_address)
    data, address = sock.recvfrom(65536)
    print('received {!r}'.format(data), flush=True)
except OSError as error:
    print(error, flush=True)
    status = 1
finally:
    print('closing socket', flush=True)
    sock.close()
    try:
        os.unlink(local_address)
    except FileNotFoundError:
        pass
sys.exit(status)
