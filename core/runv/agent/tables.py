"""Names the host validates and the guest applies: capabilities, rlimits and namespace flags (Linux's numbers),
and what makes a spec mount a bind (both sides must agree)."""

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}
CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

RLIMITS = (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
    "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)
RLIMIT_NUMBERS = {name: number for number, name in enumerate(RLIMITS)}

# <linux/sched.h>: the namespaces a container gets, by the /proc/PID/ns file that names each
NAMESPACES = {"mnt": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000, "cgroup": 0x02000000, "pid": 0x20000000,
              "user": 0x10000000}
SPEC_NAMESPACES = {"mount": "mnt", "uts": "uts", "ipc": "ipc", "cgroup": "cgroup", "pid": "pid", "user": "user",
                   "network": "net", "time": "time"}


def is_bind(entry: dict) -> bool:
    """Whether a spec mount is a bind mount (runc: type "bind", or a bind/rbind option)."""
    options = entry.get("options") or []
    return entry.get("type") == "bind" or "bind" in options or "rbind" in options
