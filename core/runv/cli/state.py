"""Print the OCI state of a container as JSON."""

from typing import Annotated

import typer

NAME = "state"


def command(ctx: typer.Context, container_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    import json

    from runv.sandbox.state import Store

    print(json.dumps(Store(ctx.obj.root).read(container_id).oci_state().to_json(), indent=2))
