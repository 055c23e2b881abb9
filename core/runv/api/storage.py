"""Storage settings shared by storage plugins: the ``[storage]`` table of runv's config file, overridden per container
by annotations.

``/etc/runv/config.toml`` (or ``$RUNV_CONFIG``)::

    [storage]
    mode = "share"                 # share | overlay | block  (the overlay plugin's default)
    cache_dir = "/var/cache/runv/storage"   # ext4 base images, devicemapper pool files
    upper_size = "4G"              # overlay mode: the sparse upper-layer disk per container
    base_size = "2G"               # block mode: minimum size of a base image (sparse)

Annotations (``io.runv.storage.*``) win over the file:
``io.runv.storage.mode=overlay|block|share``, ``io.runv.storage.overlay=true`` (same as
``mode=overlay``), ``io.runv.storage.upper-size``, ``io.runv.storage.base-size``.
"""

from __future__ import annotations

from pathlib import Path

from runv.api.config import section
from runv.api.errors import RunvError

MODES = ("share", "overlay", "block")
ANNOTATION = "io.runv.storage."
DEFAULTS = {"mode": "share", "cache_dir": "/var/cache/runv/storage", "upper_size": "4G", "base_size": "2G"}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int, where: str) -> int:
    """``512M``, ``4G``, ``1073741824`` as bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS and not value[-1:].isdigit() else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise RunvError(f"{where}: invalid size {text!r}: use bytes or a number with K, M, G or T")
    return int(number) * _UNITS[unit]


def settings(annotations: dict[str, str] | None = None) -> dict:
    """The effective storage settings for one container (file, then annotations)."""
    result = {**DEFAULTS, **section("storage")}
    for key, value in (annotations or {}).items():
        if not key.startswith(ANNOTATION):
            continue
        name = key[len(ANNOTATION) :].replace("-", "_")
        if name == "overlay":
            if value.lower() in ("true", "1", "yes"):
                result["mode"] = "overlay"
            elif value.lower() not in ("false", "0", "no"):
                raise RunvError(f"annotation {key}: expected true or false, not {value!r}")
        elif name in DEFAULTS and name != "cache_dir":
            result[name] = value
    if result["mode"] not in MODES:
        raise RunvError(f"storage mode {result['mode']!r} is not one of {', '.join(MODES)} (annotation {ANNOTATION}mode)")
    result["cache_dir"] = Path(result["cache_dir"])
    result["upper_size"] = parse_size(result["upper_size"], "upper_size")
    result["base_size"] = parse_size(result["base_size"], "base_size")
    return result
