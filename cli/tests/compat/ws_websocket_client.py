import sys, websocket
host, port = sys.argv[1].rsplit(":", 1)
try:
    ws = websocket.create_connection(f"ws://{host}:{port}/chat", host=sys.argv[2], timeout=10)
except websocket.WebSocketBadStatusException as e:
    print(f"status {e.status_code}")
    sys.exit(0)
for i in range(100):
    ws.send(f"message {i}")
    assert ws.recv() == f"message {i}"
big = bytes(i % 251 for i in range(1 << 20))
ws.send_binary(big)
assert ws.recv() == big
ws.close()
print("ok")
