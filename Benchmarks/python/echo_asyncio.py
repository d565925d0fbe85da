"""An asyncio echo server over a Unix domain socket: the idiomatic Python peer.

    python3 echo_asyncio.py /tmp/echo.sock
"""
import asyncio
import os
import sys


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(echo, path, backlog=4096)
    print(f"listening on {path}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./echo_asyncio.sock"))
