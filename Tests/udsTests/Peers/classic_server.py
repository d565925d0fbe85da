"""The classic Unix domain socket echo server (socket_echo_server_uds.py).

Usage: classic_server.py [PATH] [once]

PATH defaults to ./uds_socket. It is removed first if it exists, then the
server binds, listens and echoes each client's bytes back, 16 at a time,
printing the classic transcript. With "once" it exits after its first
connection, so a test that runs it terminates. Every line is flushed at once.
"""
import os
import socket
import sys

server_address = sys.argv[1] if len(sys.argv) > 1 else './uds_socket'
once = len(sys.argv) > 2 and sys.argv[2] == 'once'

# Make sure the socket does not already exist
try:
    os.unlink(server_address)
except OSError:
    if os.path.exists(server_address):
        raise

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
print('starting up on {}'.format(server_address), flush=True)
sock.bind(server_address)
sock.listen(1)

while True:
    print('waiting for a connection', flush=True)
    connection, client_address = sock.accept()
    try:
        print('connection from', client_address, flush=True)
        while True:
            data = connection.recv(16)
            print('received {!r}'.format(data), flush=True)
            if data:
                print('sending data back to the client', flush=True)
                connection.sendall(data)
            else:
                print('no data from', client_address, flush=True)
                break
    finally:
        connection.close()
    if once:
        break

sock.close()
os.unlink(server_address)
