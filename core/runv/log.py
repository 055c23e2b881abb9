"""runc-style logging: ``--log FILE`` in ``text`` or ``json`` (what Podman and containerd parse)."""

import json
import logging
import sys
import time

from runv.settings import Settings

logger = logging.getLogger("runv")
logger.addHandler(logging.NullHandler())  # silent until setup(): a command given no --log or --debug need not call it


class JSONFormatter(logging.Formatter):
    """One object per line with runc's keys: ``level``, ``msg``, ``time``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        return json.dumps({"level": record.levelname.lower(), "msg": record.getMessage(), "time": stamp})


def setup(settings: Settings, *, stderr: bool) -> None:
    """Sends runv's messages to ``--log`` (if given) and, for CLI commands, debug lines to stderr."""
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    logger.propagate = False
    if settings.log:
        handler = logging.FileHandler(settings.log)
        if settings.log_format == "json":
            handler.setFormatter(JSONFormatter())
        else:
            handler.setFormatter(logging.Formatter('time="%(asctime)s" level=%(levelname)s msg="%(message)s"'))
        logger.addHandler(handler)
    if stderr and settings.debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("runv: debug: %(message)s"))
        logger.addHandler(handler)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
