"""Create a new runv-ready config.json in the bundle directory."""

import json
from pathlib import Path
from typing import Annotated

import typer

NAME = "spec"


def command(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle directory to write config.json into.")] = Path("."),
    rootless: Annotated[bool, typer.Option("--rootless", hidden=True)] = False,
) -> None:
    from runv.api.errors import RunvError
    from runv.oci.default_spec import default_spec

    path = bundle / "config.json"
    if path.exists():
        raise RunvError(f"file {path} exists: remove it first")
    if not bundle.is_dir():
        raise RunvError(f"bundle {bundle} does not exist or is not a directory")
    path.write_text(json.dumps(default_spec(), indent=2) + "\n")
