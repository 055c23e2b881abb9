"""The one-line errors that name a config.json field, shared by the field parsers."""

from __future__ import annotations

from typing import Any

from runv.api.errors import RunvError


def field_error(source: str, where: str, what: str):
    raise RunvError(f"{source}: {where}: {what}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
