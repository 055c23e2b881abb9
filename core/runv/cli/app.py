"""The ``runv`` application: runc's global options, then one command per module.

Command modules import only typer at load time; what a command needs beyond that is
imported inside it, so ``runv state``, ``list``, ``kill`` and ``--help`` stay fast.
"""

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from runv.api.errors import RunvError
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
        from runv.oci.state import OCI_VERSION

        print(f"runv version {runv.__version__}\ncommit: {runv.__version__}\nspec: {OCI_VERSION}\npython: {platform.python_version()}")
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
    storage: Annotated[str, typer.Option(help="Storage plugin for the container rootfs.")] = "overlay",
    template: Annotated[str, typer.Option(
        help="Start VMs from a saved VM template: auto (one that matches, if any), off, or a name (see `runv template`).")] = "auto",
    systemd_cgroup: Annotated[bool, typer.Option("--systemd-cgroup", hidden=True)] = False,
    rootless: Annotated[Optional[str], typer.Option("--rootless", hidden=True)] = None,
    version: Annotated[bool, typer.Option("--version", "-v", is_eager=True, callback=print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """runc's global options (plus runv's guest and plugin choices); cgroup options are accepted and ignored."""
    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"must be text or json, not {log_format!r}", param_hint="--log-format")
    ctx.obj = Settings(
        root=root, log=log, log_format=log_format, debug=debug, kernel=kernel, initrd=initrd,
        hypervisor=hypervisor, storage=storage, template=template,
    )
    from runv.log import setup

    setup(ctx.obj, stderr=True)


def _register() -> None:
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
    )

    commands = (spec, create, start, run, exec_, state, kill, delete, list_, pause, resume, ps, events, features, check, plugins)
    for module in commands:
        settings = getattr(module, "CONTEXT_SETTINGS", None)
        app.command(module.NAME, help=module.__doc__, context_settings=settings)(module.command)
    app.add_typer(guest.app, name="guest")
    app.add_typer(template.app, name="template")


_register()


def main() -> None:
    """Entry point: RunvError becomes one line on stderr (and in --log) and exit status 1."""
    try:
        app()
    except RunvError as exc:
        from runv.log import logger

        logger.error("%s", exc)
        print(f"runv: {exc}", file=sys.stderr)
        sys.exit(1)
