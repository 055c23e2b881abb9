"""The hot commands' common forms, parsed without typer.

``runv state``, ``list``, ``kill``, ``start``, ``delete``, ``ps``, ``pause``, ``resume``,
``exec``, ``create`` and ``run`` are what Podman, containerd and Docker call most; importing
typer alone costs five times Python's own start here. So :func:`parse` reads their argv from a table
(:mod:`runv.cli.fast_table`) that is generated from the typer app — the one definition of
the command line — and a unit test regenerates it and fails on any difference. A form the
table does not describe fully (``--help``, ``--version``, an unknown or malformed option,
a missing argument, a bad value, a rare command) returns None: typer parses it, so its
output and exit status are typer's. A parsed command calls the same ``run`` function its
typer command calls, with the same values.

Why a generated table, not a parser built from the app at run time: building it needs
typer imported, which is the cost to avoid; a cache on disk could go stale unseen.
"""

from __future__ import annotations

import os
import sys

from runv.cli.fast_table import COMMANDS, GLOBALS
from runv.settings import Settings


def _path(value: str):
    """A command's path parameter, a Path as typer gives it (imported only when one is
    given: the global paths stay strings, runv.settings)."""
    from pathlib import Path

    return Path(value)


_CONVERT = {"str": str, "int": int, "path": _path}
_GLOBAL_CONVERT = {**_CONVERT, "path": str}  # the global paths: Settings keeps strings


def parse(argv: list[str]) -> tuple[str, Settings, dict] | None:
    """What ``runv ARGV`` asks for, as the command's module, the settings and the values of
    the command's parameters, by name; None for typer."""
    parsed = _parse(argv, GLOBALS, interspersed=GLOBALS["interspersed"], convert=_GLOBAL_CONVERT)
    if parsed is None:
        return None
    options, rest = parsed
    if not rest or rest[0] not in COMMANDS:
        return None
    command = COMMANDS[rest[0]]
    parsed = _parse(rest[1:], command, interspersed=command["interspersed"])
    if parsed is None:
        return None
    values, positionals = parsed
    if not _bind(positionals, command["arguments"], values):
        return None
    try:
        settings = Settings(**{name: options[name] for name in Settings._fields})
    except ValueError:  # --log-format: typer says what is wrong
        return None
    return command["module"], settings, values


def run(module: str, settings: Settings, values: dict) -> int | None:
    """Runs what :func:`parse` found, as the typer path would after its callback (and as
    click ends it: ``Aborted!`` on an interrupt, a quiet 1 on a closed stdout); returns
    the exit status (None for 0)."""
    from importlib import import_module

    start_logging(settings)
    try:
        return import_module(f"runv.cli.{module}").run(settings, **values)
    except (EOFError, KeyboardInterrupt):
        print("\nAborted!", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `runv list | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1


def start_logging(settings: Settings) -> None:
    """``--log`` and ``--debug``; without either, runv's logger stays silent (a NullHandler
    from its import), so a command that logs nothing does not import logging."""
    if settings.log or settings.debug:
        from runv.log import setup

        setup(settings, stderr=True)


def _parse(tokens: list[str], spec: dict, *, interspersed: bool, convert: dict = _CONVERT) -> tuple[dict, list[str]] | None:
    """Options (as click parses them: ``--opt value``, ``--opt=value``, ``-o value``, flags,
    ``--``) into a copy of the spec's defaults, and the positionals in order, each value
    made by ``convert`` for its kind. Without ``interspersed`` the first positional ends the
    options (a group's command name, exec's program) and the rest is positional as it
    stands. None where click might differ."""
    values = dict(spec["defaults"])
    positionals: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            return values, positionals + tokens[i:]
        if token[:1] != "-" or token == "-":
            positionals.append(token)
            if not interspersed:
                return values, positionals + tokens[i:]
            continue
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        if name not in spec["options"]:
            return None
        dest, kind = spec["options"][name]
        if kind in ("true", "false"):
            if eq:
                return None
            values[dest] = kind == "true"
            continue
        if kind == "typer":  # --version and the like: typer's callbacks
            return None
        if not eq:
            if i == len(tokens):
                return None
            value = tokens[i]
            i += 1
        converted = _convert(kind.rstrip("*"), value, convert)
        if converted is None:
            return None
        if kind.endswith("*"):
            values[dest] = [*(values[dest] or ()), converted]
        else:
            values[dest] = converted
    return values, positionals


def _convert(kind: str, value: str, convert: dict = _CONVERT) -> object:
    """A value as click and typer convert it; None where they might refuse it (or where
    an odd value is better left to them: empty, or looking like an option)."""
    if not value or value[:1] == "-":
        return None
    if kind == "path" and os.path.exists(value) and not os.access(value, os.R_OK):
        return None  # click.Path(readable=True) refuses it
    try:
        return convert[kind](value)
    except ValueError:
        return None


def _bind(positionals: list[str], arguments: list, values: dict) -> bool:
    """Positionals to the command's arguments (``nargs`` 1, or -1 for the rest; their
    kinds are str or path, which take any value); False when one that is required is
    missing or one is left over (typer's errors)."""
    for dest, kind, nargs, required in arguments:
        if nargs == -1:
            if positionals:
                values[dest] = [_CONVERT[kind](p) for p in positionals]
            positionals = []
        elif positionals:
            values[dest] = _CONVERT[kind](positionals.pop(0))
        elif required:
            return False
    return not positionals
