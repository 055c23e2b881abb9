"""Print the OCI state of a container as JSON."""

import typer

from runv.cli.options import ContainerId

NAME = "state"


def command(ctx: typer.Context, container_id: ContainerId) -> None:
    import json

    from runv.state import Store

    print(json.dumps(Store(ctx.obj.root).read(container_id).oci_state().to_json(), indent=2))
