"""Print the container's resource figures (and OOM kills) as runc-style JSON events."""

from typing import Annotated

import typer

from runv.cli.options import ContainerId

NAME = "events"


def command(
    ctx: typer.Context,
    container_id: ContainerId,
    stats: Annotated[bool, typer.Option("--stats", help="Print one stats event and exit.")] = False,
    interval: Annotated[str, typer.Option("--interval", help="Time between stats events (5s, 500ms, 1m).")] = "5s",
) -> None:
    import sys
    import time

    from runv.api.errors import RunvError
    from runv.records import Store
    from runv.verbs.lifecycle import ask_shim

    seconds = parse_duration(interval)
    oom_kills = None
    failed = None
    while True:
        try:
            figures = ask_shim(ctx.obj, container_id, "stats")
        except RunvError as exc:
            if stats:
                raise
            time.sleep(seconds)  # a container that stops fails a reading before its record says so
            if Store(ctx.obj.root).read(container_id).live_status() == "stopped":
                return  # the container stopped: the stream ends, as runc's does
            if str(exc) != failed:  # as runc, a failed reading is said and the stream goes on (once per reason)
                print(f"runv: {exc}", file=sys.stderr, flush=True)
                failed = str(exc)
            continue
        failed = None
        if oom_kills is not None and figures["oom_kills"] > oom_kills:
            emit({"type": "oom", "id": container_id})
        oom_kills = figures["oom_kills"]
        emit(stats_event(container_id, figures))
        if stats:
            return
        time.sleep(seconds)


def emit(event: dict) -> None:
    """One event a line, compact as runc's (Go's encoder) prints it."""
    import json

    print(json.dumps(event, separators=(",", ":")), flush=True)


def stats_event(container_id: str, figures: dict) -> dict:
    """runc's ``stats`` event shape, from the agent's figures."""
    cpu, memory = figures["cpu"], figures["memory"]
    return {
        "type": "stats",
        "id": container_id,
        "data": {
            "cpu": {"usage": {"total": cpu["total"], "percpu": cpu["percpu"], "kernel": cpu["kernel"], "user": cpu["user"]}},
            "memory": {"usage": {"usage": memory["usage"], "limit": memory["limit"]}, "cache": memory["cache"]},
            "pids": {"current": figures["pids"]},
        },
    }


def parse_duration(text: str) -> float:
    from runv.api.errors import RunvError

    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("", 1.0)):
        if text.endswith(suffix):
            try:
                value = float(text[: len(text) - len(suffix)] if suffix else text) * scale
            except ValueError:
                break
            if value > 0:
                return value
            break
    raise RunvError(f"invalid interval {text!r}: use a duration like 5s, 500ms or 1m")
