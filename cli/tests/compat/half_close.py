# A client that half-closes after its request, as netcat and some HTTP/1.0 scripts do: sends
# `GET <path>` to <addr> with `Host: <host>`, shuts its sending side, prints what comes back.
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(f"GET {sys.argv[3]} HTTP/1.1\r\nHost: {sys.argv[2]}\r\n\r\n".encode())
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(got.decode(errors="replace"))
