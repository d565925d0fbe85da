"""Sends one seqpacket message of each size given and prints the size of each answer.

    python3 seqpacket_sizes.py ADDRESS SIZE...

Each message is filled with its index, so a merged or split message shows.
"""
import socket
import sys

address = sys.argv[1]
sizes = [int(size) for size in sys.argv[2:]]
client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
client.settimeout(10)
client.connect("\0" + address[1:] if address.startswith("@") else address)
answers = []
for index, size in enumerate(sizes):
    client.send(bytes([index + 1]) * size)
    answer = client.recv(1 << 20)
    whole = answer == bytes([index + 1]) * size
    answers.append(f"{len(answer)}{'' if whole else '!'}")
client.shutdown(socket.SHUT_WR)
print(" ".join(answers), "end" if client.recv(16) == b"" else "more", flush=True)
