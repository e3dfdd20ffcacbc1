#!/usr/bin/env python3
"""A stand-in OTLP/HTTP collector for the test suite: accepts POSTs, answers 200 with an empty
protobuf ExportTraceServiceResponse, and appends "METHOD PATH BYTES" per request to a log file.
Usage: otlp_sink.py PORT LOGFILE"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log = int(sys.argv[1]), sys.argv[2]


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        with open(log, "a") as f:
            f.write(f"POST {self.path} {len(body)} {self.headers.get('Content-Type')}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
