#!/usr/bin/env python3
"""An origin that never says how large its object is: every Range request
bytes=A-B gets 206 with "Content-Range: bytes A-B/*" and B-A+1 bytes, so a
fetcher that trusts the (absent) total would store without end. Anything
else gets 200 with a short body. Logs each request as one line on stderr.

  endless_origin.py PORT"""
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if not m:
            body = b"no range\n"
            self.send_response(200)
        else:
            a, b = int(m.group(1)), int(m.group(2))
            body = b"e" * (b - a + 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/*")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
