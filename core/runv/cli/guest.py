"""Build and inspect the guest kernel and initrd."""

from typing import Annotated

import typer

app = typer.Typer(help="Build the guest kernel and initrd the VMs boot.", no_args_is_help=True)


@app.command("build")
def build(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    kernel_package: Annotated[str, typer.Option(help="Debian kernel package to take the kernel and modules from.")] = "linux-image-amd64",
) -> None:
    """Make --kernel and --initrd from Debian's kernel, busybox-static and python3.11 (idempotent)."""
    from runv.image.builder import build_guest

    settings = ctx.find_root().obj
    build_guest(settings.kernel, settings.initrd, kernel_package=kernel_package, force=force)
