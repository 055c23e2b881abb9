"""What runs in the guest and what it uses: the ps and stats requests."""

import os


def op_ps(agent, message: dict) -> dict:
    """Every user process in the guest except the agent (kernel threads have no cmdline)."""
    processes = []
    for entry in os.listdir("/proc"):
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

def op_stats(agent, message: dict) -> dict:
    """CPU, memory and process figures of the whole guest (the VM is the container),
    plus the kernel's OOM-kill count, in runc's units (nanoseconds, bytes)."""
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
    return {
        "cpu": {
            "total": total["user"] + total["kernel"],
            "user": total["user"],
            "kernel": total["kernel"],
            "percpu": [c["user"] + c["kernel"] for _, c in sorted(cpus.items(), key=lambda kv: int(kv[0][3:]))],
        },
        "memory": {"usage": memory["MemTotal"] - memory["MemAvailable"], "limit": memory["MemTotal"], "cache": memory.get("Cached", 0)},
        "pids": len(op_ps(agent, message)["processes"]),
        "oom_kills": oom_kills,
    }
