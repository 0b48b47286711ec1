# A grpcio server with raw-bytes methods (no generated code), on 127.0.0.1:<port> or <ip>:<port>:
#   /compat.Echo/Unary         the request back, with trailing metadata x-trailer: sent; the
#                              request b"missing" is answered NOT_FOUND "no such thing"
#   /compat.Echo/ServerStream  the request is a count n: n messages b"0", b"1", ...
#   /compat.Echo/ClientStream  how many messages and bytes came, as b"<n> <bytes>"
#   /compat.Echo/Bidi          every message back as it comes
#   /compat.Echo/Slow          the request back after 5 s (for deadlines)
import sys, time
from concurrent import futures
import grpc

def unary(request, context):
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    context.set_trailing_metadata((("x-trailer", "sent"),))
    return request

def server_stream(request, context):
    for i in range(int(request)):
        yield str(i).encode()

def client_stream(requests, context):
    n = size = 0
    for r in requests:
        n += 1
        size += len(r)
    return f"{n} {size}".encode()

def bidi(requests, context):
    for r in requests:
        yield r

def slow(request, context):
    time.sleep(5)
    return request

handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
}
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=16),
    options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.so_reuseport", 0)],
)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("compat.Echo", handlers),))
server.add_insecure_port(f"{host}:{sys.argv[1]}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
