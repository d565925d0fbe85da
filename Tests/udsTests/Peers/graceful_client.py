"""A client of a server that shuts down while it is connected.

Usage: graceful_client.py PATH TYPE MODE

Connects to PATH (TYPE stream or seqpacket), sends b'first' and prints its
echo as `echo first`, then `ready`. Then, by MODE:

  converse  waits for a line on standard input (sent once the server has
            begun shutting down), sends b'second' and prints `echo second`;
            tries a new connection and prints `new connect: refused` (or
            `new connect: accepted`); then hangs up and prints `end`.
  idle      sends nothing more and waits for the server to close it:
            prints `closed by the server`.

Any error is printed and the exit status is 1.
"""
import socket
import sys

path, kind, mode = sys.argv[1], sys.argv[2], sys.argv[3]
family_type = socket.SOCK_STREAM if kind == 'stream' else socket.SOCK_SEQPACKET


def echo(sock, data):
    sock.sendall(data) if kind == 'stream' else sock.send(data)
    received = b''
    while len(received) < len(data):
        part = sock.recv(len(data) - len(received))
        if not part:
            raise RuntimeError('the server closed before the echo of {!r}'.format(data))
        received += part
    print('echo {}'.format(received.decode()), flush=True)


try:
    sock = socket.socket(socket.AF_UNIX, family_type)
    sock.settimeout(60)
    sock.connect(path)
    echo(sock, b'first')
    print('ready', flush=True)
    if mode == 'converse':
        sys.stdin.readline()
        echo(sock, b'second')
        late = socket.socket(socket.AF_UNIX, family_type)
        try:
            late.connect(path)
            print('new connect: accepted', flush=True)
        except OSError:
            print('new connect: refused', flush=True)
        finally:
            late.close()
        sock.close()
        print('end', flush=True)
    else:
        while sock.recv(64):
            pass
        print('closed by the server', flush=True)
except Exception as error:
    print('error: {}'.format(error), flush=True)
    sys.exit(1)
