"""Check what can run on this host: every plugin's probe and the guest image, with fixes."""

import os
from typing import Annotated

import typer

NAME = "check"


def probe_plugin(info) -> dict:
    """``status`` (ok, unusable or broken) and ``reason`` for one enabled plugin, and a
    hypervisor's ``priority`` and ``shares`` (the filesystem its VMs' shares go over) when it loads."""
    from runv.loader import LoadError, hooks_of, load_hypervisor

    found: dict = {}
    try:
        if info.kind == "hypervisor":
            hypervisor = load_hypervisor(info.name)
            hooks, shared_fs = hypervisor.hooks, hypervisor.info.capabilities.shared_fs
            found.update(priority=hypervisor.info.priority, shares=shared_fs.fstype if shared_fs else None)
        else:
            hooks = hooks_of(info)
    except LoadError as exc:
        return {"status": "broken",
                "reason": f"{exc.reason}: reinstall {info.distribution}, or disable it ([plugins] disabled in the config file)"}
    try:
        reason = hooks.probe()
    except Exception as exc:  # noqa: BLE001 - a probe that raises is a finding, not a crash
        return {**found, "status": "broken", "reason": f"its probe raised {type(exc).__name__}: {exc}"}
    return {**found, "status": "ok" if reason is None else "unusable", "reason": reason}


def report(settings) -> dict:
    """The whole check as data: one entry per plugin and guest file, and the verdict on the
    default selection (``settings.hypervisor`` / ``settings.storage`` and the guest image)."""
    from runv.loader import AUTO, disabled, installed

    off = disabled()
    entries = []
    for info in installed():
        entry = {"kind": info.kind, "name": info.name, "distribution": info.distribution, "version": info.version}
        if info.name in off:
            entry.update(status="disabled", reason=f"disabled by {off[info.name]}")
        else:
            found = probe_plugin(info)
            entry.update(status=found["status"], reason=found["reason"])
            if info.kind == "hypervisor" and found["status"] == "ok":
                entry.update(priority=found["priority"], shares=found["shares"])
        entries.append(entry)
    for what, path in (("kernel", settings.kernel), ("initrd", settings.initrd)):
        ok = os.path.isfile(path)
        entries.append({"kind": "guest", "name": what, "path": str(path), "status": "ok" if ok else "missing",
                        "reason": None if ok else f"no guest {what} at {path}: run `runv guest build` (or pass --kernel/--initrd)"})

    def usable(kind: str, name: str) -> dict | None:
        return next((e for e in entries if e["kind"] == kind and e["name"] == name and e["status"] == "ok"), None)

    problems = []
    hypervisor = None
    if settings.hypervisor == AUTO:
        ranked = sorted((e for e in entries if e["kind"] == "hypervisor" and e["status"] == "ok"), key=lambda e: -e["priority"])
        if ranked:
            hypervisor = ranked[0]["name"]
        else:
            problems.append("no usable hypervisor plugin")
    elif usable("hypervisor", settings.hypervisor):
        hypervisor = settings.hypervisor
    else:
        problems.append(f"hypervisor {settings.hypervisor!r} cannot run here")
    if not usable("storage", settings.storage):
        problems.append(f"storage {settings.storage!r} cannot run here")
    problems += [f"guest {e['name']} missing" for e in entries if e["kind"] == "guest" and e["status"] != "ok"]
    chosen = usable("hypervisor", hypervisor) if hypervisor else None
    return {
        "entries": entries,
        "default": {"hypervisor": hypervisor, "requested_hypervisor": settings.hypervisor, "storage": settings.storage,
                    "shares": chosen.get("shares") if chosen else None, "can_run": not problems, "problems": problems},
    }


def render(result: dict) -> str:
    lines = []
    for e in result["entries"]:
        label = f"{e['kind']:<10} {e['name']:<10}"
        detail = e["reason"] or (e.get("path") or f"{e['distribution']} {e['version']}")
        if e.get("shares"):
            detail += f" (shares over {e['shares']})"
        lines.append(f"{label} {e['status']:<9} {detail}")
    d = result["default"]
    chosen = f"hypervisor {d['hypervisor'] or d['requested_hypervisor']}"
    if d["requested_hypervisor"] == "auto" and d["hypervisor"]:
        chosen += " (auto)"
    verdict = "can run" if d["can_run"] else "cannot run: " + "; ".join(d["problems"])
    shares = f", shares over {d['shares']}" if d["shares"] else ""
    lines.append(f"default: {chosen}, storage {d['storage']}{shares}: {verdict}")
    return "\n".join(lines)


def command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    import json

    from runv.api.errors import RunvError

    result = report(ctx.obj)
    print(json.dumps(result, indent=2) if as_json else render(result), flush=True)
    if not result["default"]["can_run"]:
        raise RunvError("the default selection cannot run here: " + "; ".join(result["default"]["problems"]))
