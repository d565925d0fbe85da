"""A SOCK_DGRAM echo server: each message goes back to its sender.

Usage: dgram_server.py [PATH] [COUNT]

Binds PATH (default ./uds_socket; an existing file there is removed first, as
the classic server does), receives COUNT messages (default 1) with recvfrom,
prints each with its sender's address and sends it back, then removes PATH.
"""
import os
import socket
import sys

server_address = sys.argv[1] if len(sys.argv) > 1 else './uds_socket'
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1

try:
    os.unlink(server_address)
except OSError:
    if os.path.exists(server_address):
        raise

sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
print('starting up on {}'.format(server_address), flush=True)
sock.bind(server_address)
try:
    for _ in range(count):
        print('waiting for a message', flush=True)
        data, address = sock.recvfrom(65536)
        print('received {!r} from {}'.format(data, address), flush=True)
        if address:
            print('sending data back to {}'.format(address), flush=True)
            sock.sendto(data, address)
        else:
            print('cannot reply: the sender did not bind an address', flush=True)
finally:
    sock.close()
    os.unlink(server_address)
