# A python `websockets` echo server on <host>:<port> (host 127.0.0.1 unless given): every
# message comes back as it was sent.
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    async with serve(echo, host, int(sys.argv[1]), max_size=4 << 20):
        print("ready", flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
