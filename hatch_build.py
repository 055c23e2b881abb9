"""hatchling's build hook for the runv wheel: records the commit it is built from as
``runv/_commit.py`` (``$RUNV_COMMIT`` when the tree is not a git checkout, as a distribution
building from a tarball sets it), which ``runv --version`` prints (runv.commit)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CommitHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or version == "editable":  # an editable install asks git itself
            return
        spec = importlib.util.spec_from_file_location("runv_commit", Path(self.root) / "core/runv/commit.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found = os.environ.get("RUNV_COMMIT") or module.describe(Path(self.root))
        self.scratch = tempfile.mkdtemp(prefix="runv-commit-")
        recorded = Path(self.scratch) / "_commit.py"
        recorded.write_text(f'"""Written by hatch_build.py when this wheel was built."""\n\nCOMMIT = {found!r}\n')
        build_data["force_include"][str(recorded)] = "runv/_commit.py"

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if getattr(self, "scratch", None):
            shutil.rmtree(self.scratch, ignore_errors=True)
