"""runc behaviours that Podman (conmon) and containerd (go-runc) rely on, found by running
them against runv (tests/test_podman.py, tests/test_containerd.py), pinned here at runv's
own command line."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import RUNV, vm_processes_in


# ---------------------------------------------------------------- no VM needed


def test_delete_force_of_an_unknown_container_succeeds_silently(runv):
    result = runv("delete", "--force", "ghost")
    assert result.returncode == 0 and result.stderr == ""  # runc's answer: Podman and containerd retry deletes
    result = runv("delete", "ghost")
    assert result.returncode == 1 and "does not exist" in result.stderr
