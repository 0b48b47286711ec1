# An HTTP/1.1 app (python's http.server) on 127.0.0.1:<port>, for the cases clients meet:
#   GET|HEAD /hello   `hello` (content-length 5)
#   GET /trailers     chunked `hello`, then the trailer x-checksum: 5, declared in `Trailer`
#   GET /undeclared   the same, not declared
#   GET /empty        204
#   GET /cached       200 with ETag "v1"; 304 to If-None-Match: "v1"
#   PUT /upload       refused (413) before reading: with Expect: 100-continue, no 100 is sent
#   PUT /count        reads the body and answers how many bytes came
import sys, http.server

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def chunked_with_trailer(self, declared):
        self.send_response(200)
        self.send_header("transfer-encoding", "chunked")
        if declared:
            self.send_header("trailer", "x-checksum")
        self.end_headers()
        self.wfile.write(b"5\r\nhello\r\n0\r\nx-checksum: 5\r\n\r\n")

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if self.path == "/hello":
            self.reply(200, b"hello")
        elif self.path == "/trailers":
            self.chunked_with_trailer(True)
        elif self.path == "/undeclared":
            self.chunked_with_trailer(False)
        elif self.path == "/empty":
            self.reply(204)
        elif self.path == "/cached":
            if self.headers.get("if-none-match") == '"v1"':
                self.reply(304, headers=[("etag", '"v1"')])
            else:
                self.reply(200, b"fresh", [("etag", '"v1"')])
        else:
            self.reply(404, b"not found")

    def handle_expect_100(self):
        if self.path == "/upload":
            self.reply(413, b"too large")
            self.close_connection = True
            return False
        return super().handle_expect_100()

    def do_PUT(self):
        if self.path == "/upload":
            self.reply(413, b"too large")
            self.close_connection = True
            return
        n = int(self.headers.get("content-length", "0"))
        got = len(self.rfile.read(n))
        self.reply(200, f"{got} bytes".encode())

host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
http.server.ThreadingHTTPServer((host, int(sys.argv[1])), H).serve_forever()
