"""What runs in the guest and what it uses: the ps and stats requests."""

import os


def op_ps(agent, message: dict) -> dict:
    """Every user process in the guest except the agent (kernel threads have no cmdline);
    with ``container``, only that container's (runv.agent.pods.container_pids)."""
    from runv.agent.pods import container_pids

    cid = message.get("container")
    pids = [str(p) for p in container_pids(agent, agent.processes.resolve(cid))] if cid else os.listdir("/proc")
    processes = []
    for entry in pids:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if cmdline == [b""]:
            continue
        processes.append({"pid": int(entry), "cmd": " ".join(a.decode(errors="replace") for a in cmdline if a)})
    return {"processes": sorted(processes, key=lambda p: p["pid"])}

def _keyed(path: str) -> dict:
    """A cgroup file of ``key value`` lines (cpu.stat, memory.stat, memory.events)."""
    with open(path) as f:
        return {key: int(value) for key, value in (line.split() for line in f if line.strip())}


def _cgroup_figures(path: str, figures: dict) -> None:
    """The container's own cgroup's figures over the guest's (runc reads these on cgroup v2)."""
    try:
        cpu = _keyed(f"{path}/cpu.stat")
        figures["cpu"].update(total=cpu["usage_usec"] * 1000, user=cpu["user_usec"] * 1000, kernel=cpu["system_usec"] * 1000)
    except (OSError, KeyError, ValueError):
        pass
    try:
        with open(f"{path}/memory.current") as f:
            figures["memory"]["usage"] = int(f.read())
        with open(f"{path}/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            figures["memory"]["limit"] = min(int(limit), figures["memory"]["limit"])
        figures["memory"]["cache"] = _keyed(f"{path}/memory.stat").get("file", 0)
        figures["oom_kills"] = _keyed(f"{path}/memory.events").get("oom_kill", 0)
    except (OSError, ValueError):
        pass
    try:
        with open(f"{path}/pids.current") as f:
            figures["pids"] = int(f.read())
    except (OSError, ValueError):
        pass


def op_stats(agent, message: dict) -> dict:
    """CPU, memory and process figures in runc's units (nanoseconds, bytes): the cgroup's of
    the container (``container``, else the VM's own) where the guest has one, else the whole
    guest's; the limit is never above the guest's RAM; per-CPU times are the guest's."""
    tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
    cpus = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                name, *ticks = line.split()
                user, nice, system, _idle, _iowait, irq, softirq = (int(t) for t in ticks[:7])
                cpus[name] = {"user": (user + nice) * tick_ns, "kernel": (system + irq + softirq) * tick_ns}
    total = cpus.pop("cpu")
    memory = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            memory[key] = int(value.split()[0]) * 1024
    oom_kills = 0
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("oom_kill "):
                oom_kills = int(line.split()[1])
    figures = {
        "cpu": {
            "total": total["user"] + total["kernel"],
            "user": total["user"],
            "kernel": total["kernel"],
            "percpu": [c["user"] + c["kernel"] for _, c in sorted(cpus.items(), key=lambda kv: int(kv[0][3:]))],
        },
        "memory": {"usage": memory["MemTotal"] - memory["MemAvailable"], "limit": memory["MemTotal"], "cache": memory.get("Cached", 0)},
        "oom_kills": oom_kills,
    }
    container = agent.processes.confined.get(agent.processes.resolve(message.get("container")))
    if container is not None and container.cgroup:
        _cgroup_figures(container.cgroup, figures)
    if "pids" not in figures:  # no cgroup, or no pids.current: the guest's processes, counted
        figures["pids"] = len(op_ps(agent, message)["processes"])
    return figures
