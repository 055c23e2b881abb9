"""A stand-in for ``cloud-hypervisor`` in tests: it runs no guest, but behaves as the VMM
does towards runv. It records its command line (``fake-ch.argv`` in its working
directory), connects to each ``--fs`` socket as the VMM connects to its virtiofsd, serves
the REST API on ``--api-socket`` (recording each request in ``fake-ch.requests``), and
exits on ``PUT /api/v1/vmm.shutdown`` or SIGTERM. ``FAKE_CH_FAIL=words`` makes it print
the words and exit 1 instead, as a VMM that refuses its command line does."""

import http.server
import json
import os
import socket
import socketserver
import sys

argv = sys.argv[1:]
if os.environ.get("FAKE_CH_FAIL"):
    print(f"Error: {os.environ['FAKE_CH_FAIL']}", file=sys.stderr)
    sys.exit(1)
with open("fake-ch.argv", "w") as f:
    json.dump(argv, f)
options = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1) if argv[i].startswith("--")]
daemons = []
for name, value in options:
    if name == "--fs":
        fields = dict(item.split("=", 1) for item in value.split(","))
        daemon = socket.socket(socket.AF_UNIX)
        daemon.connect(fields["socket"])
        daemons.append(daemon)  # held open for the VMM's life, as the vhost-user connection is
api_socket = dict(options)["--api-socket"].removeprefix("path=")


class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open("fake-ch.requests", "a") as f:
            f.write(f"{self.command} {self.path}\n")
        if self.path == "/api/v1/vm.nothing":
            self.send_response(405)
            body = b"unknown endpoint"
        else:
            self.send_response(204)
            body = b""
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            if body:
                self.wfile.write(body)
        finally:  # the client may hang up as soon as it has the status line
            if self.path == "/api/v1/vmm.shutdown":
                os._exit(0)

    def do_GET(self):
        body = json.dumps({"state": "Running"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


with socketserver.UnixStreamServer(api_socket, Api) as server:
    server.serve_forever()
