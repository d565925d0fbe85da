"""Connects to an abstract stream socket as another user whose only extra
group is GROUP, sends MESSAGE and prints what comes back.

usage: group_member_client.py NAME UID GID GROUP MESSAGE   (as root)
"""
import os
import socket
import sys

name, uid, gid, group, message = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
os.setgroups([group])
os.setgid(gid)
os.setuid(uid)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.settimeout(30)
client.connect(b"\0" + name.encode())
client.sendall(message.encode())
client.shutdown(socket.SHUT_WR)
received = b""
while True:
    chunk = client.recv(4096)
    if not chunk:
        break
    received += chunk
print("received", received.decode(errors="replace"))
