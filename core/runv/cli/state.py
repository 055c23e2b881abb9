"""Print the OCI state of a container as JSON."""

from runv.settings import Settings

NAME = "state"


def run(settings: Settings, container_id: str) -> None:
    import json

    from runv.records import Store

    print(json.dumps(Store(settings.root).read(container_id).oci_state().to_json(), indent=2))


def typer_command():
    """The command as typer declares it (the fast path calls :func:`run` without typer)."""
    from runv.cli.options import container_command

    return container_command(run)
