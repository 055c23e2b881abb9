"""Build and inspect the guest kernel and initrd."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from runv.settings import Settings

app = typer.Typer(help="Build the guest kernel and initrd the VMs boot.", no_args_is_help=True)


@app.command("build")
def build(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    kernel_package: Annotated[str, typer.Option(help="Debian kernel package to take the kernel and modules from.")] = "linux-image-amd64",
    no_template: Annotated[bool, typer.Option(
        "--no-template", help="Do not make the default VM template (for packagers: it is a booted guest, made on the target).",
    )] = False,
) -> None:
    """Make --kernel and --initrd from Debian's kernel, busybox-static and python3.11, then the
    default VM template from them (`runv template create`); each only when out of date."""
    from pathlib import Path

    from runv.guest.builder import build_guest, print_to_stderr

    settings = ctx.find_root().obj
    build_guest(Path(settings.kernel), Path(settings.initrd), kernel_package=kernel_package, force=force)
    if not no_template:
        default_template(settings, print_to_stderr)


def default_template(settings: "Settings", progress: Callable[[str], None]) -> None:
    """Make the template of the default shape, unless one made from this kernel and initrd is there."""
    from runv.api.errors import RunvError
    from runv.templates import make, store

    try:
        record = make.create(settings, unless_current=True)
    except RunvError as exc:
        raise RunvError(f"guest image ready, but the default template was not made: {exc} "
                        "(`runv template create` retries; --no-template skips it)") from None
    if record is None:
        progress(f"default template up to date in {store.directory()}")
    else:
        progress(f"default template {record['name']} made in {record['seconds']:.1f} s in {store.directory()}")
