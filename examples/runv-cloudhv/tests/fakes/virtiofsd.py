"""A stand-in for ``virtiofsd`` in tests: it checks the options runv gives it
(``--socket-path=S -o source=DIR``, DIR a directory), records them in
``fake-virtiofsd.<socket>.argv``, listens on S, and exits once its one VMM connection
closes (as virtiofsd does when its VMM goes away) or on SIGTERM."""

import json
import os
import socket
import sys

argv = sys.argv[1:]
path = next(a.removeprefix("--socket-path=") for a in argv if a.startswith("--socket-path="))
source = argv[argv.index("-o") + 1].removeprefix("source=")
if not os.path.isdir(source):
    print(f"fake virtiofsd: source {source} is not a directory", file=sys.stderr)
    sys.exit(1)
with open(f"fake-virtiofsd.{path}.argv", "w") as f:
    json.dump(argv, f)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(1)
connection, _ = server.accept()
while connection.recv(4096):
    pass
