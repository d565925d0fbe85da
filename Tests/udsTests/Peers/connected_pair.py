"""A listener with one accepted connection whose 5 bytes are never read.

Prints the inodes of the listener, the client and the accepted socket, then
sleeps until killed: `uds ls --all` must show the queue and the peers.
"""
import os
import socket
import sys
import time

path = sys.argv[1]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(8)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(path)
client.sendall(b"hello")
accepted, _ = listener.accept()
inodes = [os.fstat(s.fileno()).st_ino for s in (listener, client, accepted)]
print("ready", *inodes, flush=True)
time.sleep(120)
