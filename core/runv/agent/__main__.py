"""Starts the agent: ``python3.11 -S -B -m runv.agent`` in the VM, or ``--socket PATH --rootfs DIR`` on the host.

In the VM (``/init`` execs it, so it is PID 1; no arguments) the kernel command line
picks the host channel (see runv.agent.channel: the virtio-serial port, a tty or vsock)
and ``runv.debug`` turns the debug log on; the agent serves the channel for the VM's
life, with the container's rootfs mounted at /rootfs.

On the host, ``python -m runv.agent --socket PATH --rootfs DIR [--debug]`` runs the same
agent as a plain process, so a "fake VMM" can stand in for a VM: it listens on a unix
socket at PATH (as a VMM serves the agent's channel) and serves one host connection at a
time, saying ``ready`` to each; the processes it started outlive a connection, as they
outlive a reconnect in the VM. It never reads /proc/cmdline. Processes run chrooted in
DIR (``--rootfs /``: no chroot, as in the unit tests). Not being PID 1, it answers
``signal`` with ``all`` by signalling only its own processes, and ``poweroff`` (or
SIGTERM, SIGINT) by killing them and exiting; the socket is removed on the way out.
"""

import os
import signal
import sys

from runv.agent import debug
from runv.agent.channel import from_cmdline, listen_unix
from runv.agent.debug import log
from runv.agent.loop import Agent
from runv.agent.network import link_up

# Arguments are parsed by hand: argparse would add its imports (re, gettext...) to every guest boot.
USAGE = "usage: python -m runv.agent [--socket PATH --rootfs DIR [--private DIR] [--debug]]"
OPTIONS_WITH_VALUE = ("--socket", "--rootfs", "--private")


def parse_args(argv: list) -> dict:
    """``{"socket": PATH | None, "rootfs": DIR | None, "private": DIR | None, "debug": bool}``;
    SystemExit on misuse."""
    options = {"socket": None, "rootfs": None, "private": None, "debug": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, equals, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg == "--debug":
            options["debug"] = True
        elif name in OPTIONS_WITH_VALUE and (equals or args):
            options[name[2:]] = value if equals else args.pop(0)
        else:
            raise SystemExit(f"runv-agent: bad argument {arg!r}\n{USAGE}")
    if (options["socket"] is None) != (options["rootfs"] is None):
        raise SystemExit(f"runv-agent: --socket and --rootfs go together\n{USAGE}")
    if options["private"] is not None and options["socket"] is None:
        raise SystemExit(f"runv-agent: --private goes with --socket\n{USAGE}")
    return options


def serve_socket(path: str, rootfs: str, private: str | None = None) -> None:
    """The host mode: the agent on a unix socket at ``path`` until poweroff, SIGTERM or SIGINT.
    ``private``: where the guest's staging area (/run/runv: shares mounted before the rootfs)
    goes on the host, so a fake VM's staging never lands in the host's own /run/runv."""
    if not os.path.isdir(rootfs):
        raise SystemExit(f"runv-agent: --rootfs {rootfs}: not a directory")
    agent = Agent(listen_unix(path), rootfs=rootfs)
    if private is not None:
        agent.private = os.path.abspath(private)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    log(f"serving {path} with rootfs {rootfs}")
    try:
        agent.run()
    finally:
        agent.processes.kill_all(signal.SIGKILL)
        try:
            os.unlink(path)
        except OSError:
            pass


def serve_vm() -> None:
    """The VM mode: the channel the kernel command line names, the rootfs at /rootfs."""
    with open("/proc/cmdline") as f:
        args = f.read().split()
    debug.ENABLED = "runv.debug" in args
    where, channel = from_cmdline(args)
    log(f"serving {where}")
    link_up("lo")  # at boot, so in every template: a container without NICs needs no `network` request
    Agent(channel).run()


def main(argv: list | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options["socket"] is None:
        serve_vm()
    else:
        debug.ENABLED = options["debug"]
        serve_socket(options["socket"], options["rootfs"], options["private"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
