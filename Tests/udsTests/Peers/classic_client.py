"""The classic Unix domain socket echo client (socket_echo_client_uds.py).

Usage: classic_client.py [PATH]

Connects to PATH (default ./uds_socket), sends the 41-byte message in one
sendall and reads the echo back 16 bytes at a time until all 41 came back,
printing the classic transcript. A failed connect prints the error and exits
with status 1. Unlike the original it also stops if the server closes early,
so a broken server cannot make it loop forever.
"""
import socket
import sys

server_address = sys.argv[1] if len(sys.argv) > 1 else './uds_socket'

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
print('connecting to {}'.format(server_address), flush=True)
try:
    sock.connect(server_address)
except socket.error as msg:
    print(msg, flush=True)
    sys.exit(1)

try:
    message = b'This is the message. It will be repeated.'
    print('sending {!r}'.format(message), flush=True)
    sock.sendall(message)

    amount_received = 0
    amount_expected = len(message)
    while amount_received < amount_expected:
        data = sock.recv(16)
        if not data:
            break
        amount_received += len(data)
        print('received {!r}'.format(data), flush=True)
finally:
    print('closing socket', flush=True)
    sock.close()

sys.exit(0 if amount_received == amount_expected else 1)
