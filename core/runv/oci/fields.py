"""The one-line errors that name a config.json field or a JSON file, shared by the parsers.

Light (no typing, no attrs): ``runv exec`` reads its ``--process`` file with it.
"""

from __future__ import annotations

import json
import os

from runv.api.errors import RunvError


def field_error(source: str, where: str, what: str):
    raise RunvError(f"{source}: {where}: {what}")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_json(path: str | os.PathLike, what: str) -> object:
    """Reads a JSON file, with one-line errors that name it."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise RunvError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise RunvError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RunvError(f"{path} is not valid JSON: {exc}") from None
