"""runv's config file (``/etc/runv/config.toml``, or the file ``$RUNV_CONFIG`` names): one
table per concern (``[plugins]``, ``[storage]``, a plugin's own, such as ``[kvmtool]``)."""

from __future__ import annotations

import os

from runv.api.errors import RunvError

CONFIG_ENV = "RUNV_CONFIG"  # overrides the path of runv's config file (tests, packagers)
DEFAULT_CONFIG = "/etc/runv/config.toml"


def config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def config() -> dict:
    """The whole config file; ``{}`` when there is none."""
    import tomllib

    path = config_path()
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RunvError(f"cannot read {path}: {exc}") from None


def section(name: str) -> dict:
    """The table ``[name]`` of the config file (``{}`` when absent); anything but a table is an error."""
    table = config().get(name, {})
    if not isinstance(table, dict):
        raise RunvError(f"{config_path()}: [{name}] must be a table")
    return table
