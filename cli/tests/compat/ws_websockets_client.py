import asyncio, socket, sys
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        async with connect(f"ws://{sys.argv[2]}/chat", sock=sock, max_size=4 << 20, open_timeout=10) as ws:
            for i in range(100):
                await ws.send(f"message {i}")
                assert await ws.recv() == f"message {i}"
            big = bytes(i % 251 for i in range(1 << 20))
            await ws.send(big)
            assert await ws.recv() == big
    except InvalidStatus as e:
        print(f"status {e.response.status_code}")
        return
    print("ok")

asyncio.run(asyncio.wait_for(main(), 30))
