# A grpcio client of grpc_server.py: `grpc_client.py <target> <authority> all` runs every call
# shape and prints `ok`; `grpc_client.py <target> <authority> status <method> [timeout]` makes
# one unary call and prints its status code's name and details.
import sys
import grpc

target, authority, mode = sys.argv[1], sys.argv[2], sys.argv[3]
options = [
    ("grpc.default_authority", authority),
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.enable_retries", 0),
]
channel = grpc.insecure_channel(target, options=options)
grpc.channel_ready_future(channel).result(timeout=10)

def method(kind, name):
    return getattr(channel, kind)(f"/compat.Echo/{name}")

if mode == "status":
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10
    try:
        method("unary_unary", sys.argv[4])(b"hello", timeout=timeout)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name, e.details())
    sys.exit(0)

# Unary, with the server's trailing metadata.
reply, call = method("unary_unary", "Unary").with_call(b"hello", timeout=10)
assert reply == b"hello", reply
trailers = dict(call.trailing_metadata())
assert trailers.get("x-trailer") == "sent", trailers

# A 1 MB message both ways.
big = bytes(i % 251 for i in range(1 << 20))
assert method("unary_unary", "Unary")(big, timeout=10) == big

# The server's own error status, with its message.
try:
    method("unary_unary", "Unary")(b"missing", timeout=10)
    raise AssertionError("no error")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing", (e.code(), e.details())

# Server streaming: 100 messages.
got = list(method("unary_stream", "ServerStream")(b"100", timeout=10))
assert got == [str(i).encode() for i in range(100)], got[:5]

# Client streaming: 100 messages.
reply = method("stream_unary", "ClientStream")(iter([b"x" * 10] * 100), timeout=10)
assert reply == b"100 1000", reply

# Bidirectional: 100 messages echoed in order.
sent = [f"m{i}".encode() for i in range(100)]
got = list(method("stream_stream", "Bidi")(iter(sent), timeout=10))
assert got == sent, got[:5]

# The client's deadline: 300 ms on a call that takes 5 s.
try:
    method("unary_unary", "Slow")(b"late", timeout=0.3)
    raise AssertionError("no deadline")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (e.code(), e.details())

print("ok")
