"""A framing peer for `uds --frame`, written from the formats' definitions.

Usage: frame_peer.py serve|connect PATH FORMAT talk|oversize

FORMAT is lines, nul (each frame ends in b'\\n' or b'\\0'), or u8, u16be,
u16le, u32be, u32le, u64be, u64le: a length packed with struct ('>I' for
u32be) before each frame.

serve binds PATH, prints `ready` and accepts one connection; connect
connects to PATH. Then:

talk      sends its frames, several in one sendall and the last one a byte
          at a time with small sleeps, printing `sent FRAME` for each; shuts
          down its write side; reads to the end of the stream and prints
          `got FRAME` for each frame received. Frames are printed escaped as
          uds prints them: printable ASCII as it is, a backslash as \\\\, any
          other byte as \\xNN. A partial frame at the end prints `partial N`.
oversize  sends the start of a frame of 1000000 bytes (255 for u8; a
          length prefix alone), or 5000 bytes without a delimiter, and prints `closed` once
          the peer closes the connection (within 10 s), or `still open`.

Any error is printed and the exit status is 1.
"""
import json
import socket
import struct
import sys
import time

PACKING = {'u8': '>B', 'u16be': '>H', 'u16le': '<H', 'u32be': '>I', 'u32le': '<I', 'u64be': '>Q', 'u64le': '<Q'}
DELIMITERS = {'lines': b'\n', 'nul': b'\0'}


def escape(frame):
    out = []
    for byte in frame:
        if byte == 0x5C:
            out.append('\\\\')
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append('\\x{:02x}'.format(byte))
    return ''.join(out)


def encode(frame, name):
    if name in DELIMITERS:
        return frame + DELIMITERS[name]
    return struct.pack(PACKING[name], len(frame)) + frame


def decode(data, name):
    """The frames in data, and the length of a partial frame left at the end."""
    frames = []
    if name in DELIMITERS:
        parts = data.split(DELIMITERS[name])
        return parts[:-1], len(parts[-1])
    width = struct.calcsize(PACKING[name])
    offset = 0
    while len(data) - offset >= width:
        (length,) = struct.unpack(PACKING[name], data[offset:offset + width])
        if len(data) - offset - width < length:
            break
        frames.append(data[offset + width:offset + width + length])
        offset += width + length
    return frames, len(data) - offset


def frames_for(name):
    frames = [
        b'hello',
        b'',
        b'back\\slash',
        json.dumps({'id': 1, 'text': 'caf\u00e9', 'tags': ['a', 'b']}).encode(),
        bytes([0x01, 0x7F, 0x80, 0xFF]),
        b'two\nlines\0and a nul',
        b'x' * (200 if name == 'u8' else 3000),
    ]
    if name in DELIMITERS:
        frames = [frame for frame in frames if DELIMITERS[name] not in frame]
    return frames


def talk(sock, name):
    frames = frames_for(name)
    sock.sendall(b''.join(encode(frame, name) for frame in frames))
    for frame in frames:
        print('sent ' + escape(frame), flush=True)
    trickled = b'trickled, byte by byte'
    for byte in encode(trickled, name):
        sock.sendall(bytes([byte]))
        time.sleep(0.002)
    print('sent ' + escape(trickled), flush=True)
    sock.shutdown(socket.SHUT_WR)
    data = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    received, partial = decode(data, name)
    for frame in received:
        print('got ' + escape(frame), flush=True)
    if partial:
        print('partial {}'.format(partial), flush=True)


def oversize(sock, name):
    if name in DELIMITERS:
        sock.sendall(b'y' * 5000)
    else:
        sock.sendall(struct.pack(PACKING[name], 255 if name == 'u8' else 1000000))
    sock.settimeout(10)
    try:
        while True:
            if not sock.recv(65536):
                break
        print('closed', flush=True)
    except ConnectionResetError:
        print('closed', flush=True)
    except socket.timeout:
        print('still open', flush=True)


def main():
    mode, path, name, scenario = sys.argv[1:5]
    if name not in PACKING and name not in DELIMITERS:
        raise SystemExit('frame_peer.py: unknown format {}'.format(name))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if mode == 'serve':
        sock.bind(path)
        sock.listen(1)
        print('ready', flush=True)
        # Generous: a loaded machine (a sanitizer run) may take long to
        # start the client; the tests bound every wait themselves.
        sock.settimeout(60)
        connection, _ = sock.accept()
        connection.settimeout(60)
    else:
        sock.connect(path)
        sock.settimeout(60)
        connection = sock
    {'talk': talk, 'oversize': oversize}[scenario](connection, name)
    connection.close()


try:
    main()
except OSError as error:
    print('frame_peer.py: {}'.format(error), file=sys.stderr, flush=True)
    sys.exit(1)
