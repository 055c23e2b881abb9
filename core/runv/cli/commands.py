"""The command line, defined once: the typer app, runc's global options, then one command
per module. Help, errors and every rare form are typer's; the hot commands' common forms
are parsed from a table generated from this app (:mod:`runv.cli.fast`), and
``python -m runv.cli.commands`` writes that table.

Command modules import only typer at load time (a hot command's module not even that: it
declares its typer command in ``typer_command()``, around a plain ``run`` the fast path
calls); what a command needs beyond that is imported inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from runv.cli.fast import start_logging
from runv.settings import DEFAULT_INITRD, DEFAULT_KERNEL, DEFAULT_ROOT, Settings

app = typer.Typer(
    name="runv",
    help="Run OCI containers, each in its own virtual machine, with runc's command line.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def print_version(value: bool) -> None:
    """``runv --version`` in runc's form (Podman and containerd read its first line)."""
    if value:
        import platform

        import runv
        from runv.commit import commit
        from runv.oci.state import OCI_VERSION

        print(f"runv version {runv.__version__}\ncommit: {commit()}\nspec: {OCI_VERSION}\npython: {platform.python_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    root: Annotated[Path, typer.Option(help="Directory for container state.")] = DEFAULT_ROOT,
    log: Annotated[Optional[Path], typer.Option(help="Write runv's own messages to this file.")] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="Format of --log: text or json.")] = "text",
    debug: Annotated[bool, typer.Option(help="Log debug messages (and the guest console's boot lines).")] = False,
    kernel: Annotated[Path, typer.Option(help="Guest kernel (built by `runv guest build`).")] = DEFAULT_KERNEL,
    initrd: Annotated[Path, typer.Option(help="Guest initrd (built by `runv guest build`).")] = DEFAULT_INITRD,
    hypervisor: Annotated[str, typer.Option(help="Hypervisor plugin, or auto.")] = "auto",
    storage: Annotated[str, typer.Option(help="Storage plugin for the container rootfs.")] = "bundle",
    template: Annotated[str, typer.Option(
        help="Start VMs from a saved VM template: auto (one that matches, if any), off, or a name (see `runv template`).")] = "auto",
    systemd_cgroup: Annotated[bool, typer.Option("--systemd-cgroup", hidden=True)] = False,
    rootless: Annotated[Optional[str], typer.Option("--rootless", hidden=True)] = None,
    version: Annotated[bool, typer.Option("--version", "-v", is_eager=True, callback=print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """runc's global options (plus runv's guest and plugin choices); cgroup options are accepted and ignored."""
    try:
        ctx.obj = Settings(root=root, log=log, log_format=log_format, debug=debug, kernel=kernel, initrd=initrd,
                           hypervisor=hypervisor, storage=storage, template=template)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    start_logging(ctx.obj)


def _register() -> tuple:
    """Adds every command to the app; returns the command modules."""
    from runv.cli import (
        check,
        create,
        delete,
        events,
        exec_,
        features,
        guest,
        kill,
        list_,
        pause,
        plugins,
        ps,
        resume,
        run,
        spec,
        start,
        state,
        template,
        update,
    )

    commands = (spec, create, start, run, exec_, state, kill, delete, list_, pause, resume, ps, events, update, features, check, plugins)
    for module in commands:
        settings = getattr(module, "CONTEXT_SETTINGS", None)
        command = module.typer_command() if hasattr(module, "typer_command") else module.command
        app.command(module.NAME, help=module.__doc__, context_settings=settings)(command)
    app.add_typer(guest.app, name="guest")
    app.add_typer(template.app, name="template")
    return commands


COMMAND_MODULES = _register()


# ---------------------------------------------------------------- the fast path's table


def _param(param) -> tuple[list[str], str]:
    """A click parameter's names and kind, as the fast path reads them (``true``/``false``
    flags; ``str``, ``int``, ``path`` values, ``*`` when repeatable; ``typer`` for what
    only typer may handle). Raises for what the fast path cannot reproduce."""
    from typer.models import TyperPath

    names = list(param.opts)
    if param.is_eager or param.callback is not None:
        return names + list(param.secondary_opts), "typer"
    if param.envvar or getattr(param, "prompt", None) or getattr(param, "count", False) or param.nargs not in (1, -1):
        raise ValueError(f"{param.name}: the fast path cannot parse it")
    if getattr(param, "is_flag", False):
        if not param.is_bool_flag:
            raise ValueError(f"{param.name}: a flag that is not a bool")
        return names, "true"
    if isinstance(param.type, TyperPath):
        path = param.type
        checks = (path.exists, path.file_okay, path.dir_okay, path.readable, path.writable, path.resolve_path, path.allow_dash)
        if checks != (False, True, True, True, False, False, False):
            raise ValueError(f"{param.name}: a path with checks")
        kind = "path"
    else:
        kind = {"StringParamType": "str", "IntParamType": "int"}.get(type(param.type).__name__)
        if kind is None:
            raise ValueError(f"{param.name}: type {param.type.name}")
    return names, kind + "*" * bool(param.multiple)


def _spec(command, *, group: bool = False) -> dict:
    """One click command (or the group, for the global options) as the fast path's table entry."""
    def setting(name: str) -> bool:  # what the command's context will have
        return command.context_settings.get(name, getattr(command, name))

    if setting("ignore_unknown_options") or (setting("allow_extra_args") and not group):
        raise ValueError(f"{command.name}: unknown options or extra arguments allowed")
    options, arguments, defaults = {}, [], {}
    for param in command.params:
        defaults[param.name] = param.default
        names, kind = _param(param)
        if param.param_type_name == "argument":
            if kind not in ("str", "path"):
                raise ValueError(f"{param.name}: an argument of kind {kind}")
            arguments.append((param.name, kind, param.nargs, param.required))
            continue
        options.update(dict.fromkeys(names, (param.name, kind)))
        if kind == "true":
            options.update(dict.fromkeys(param.secondary_opts, (param.name, "false")))
    return {"options": options, "arguments": arguments, "defaults": defaults, "interspersed": setting("allow_interspersed_args")}


def fast_table() -> dict:
    """GLOBALS and COMMANDS for :mod:`runv.cli.fast_table`, read from the app."""
    group = typer.main.get_command(app)
    spec = _spec(group, group=True)
    commands = {}
    for module in COMMAND_MODULES:
        if hasattr(module, "typer_command"):
            command = group.commands[module.NAME]
            commands[module.NAME] = {"module": module.__name__.rsplit(".", 1)[1], **_spec(command)}
    return {"GLOBALS": {key: spec[key] for key in ("options", "defaults", "interspersed")}, "COMMANDS": commands}


def fast_table_source() -> str:
    """The text of core/runv/cli/fast_table.py."""
    import pprint

    lines = [
        '"""Generated from the typer app by `python -m runv.cli.commands`; do not edit.',
        "",
        "tests/unit/test_cli_fast.py regenerates it and fails on any difference.",
        '"""',
    ]
    for name, value in fast_table().items():  # plain values: the table is read without pathlib
        lines += ["", f"{name} = {pprint.pformat(value, width=120, sort_dicts=False)}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    Path(__file__).with_name("fast_table.py").write_text(fast_table_source())
