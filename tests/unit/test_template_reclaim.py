"""What dead template makers leave (runv.templates.store.reclaim): a maker killed with the
host, or by a test, leaves its work directory (a whole VM's saved RAM) or the template it
was replacing; the next create that looks for a template removes them, never a live
maker's (it holds its directory locked) nor a template."""

from __future__ import annotations

import os
import subprocess
import sys

from runv.templates import store


def test_a_dead_makers_leftovers_go_a_live_makers_stay(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="runv")
    monkeypatch.setenv(store.DIR_ENV, str(tmp_path))
    dead, live, old = (tmp_path / name for name in (f"{store.MAKING}1", f"{store.MAKING}2", f"{store.OLD}tcg-x-3"))
    template = tmp_path / "tcg-256m-1c-0123abcd"
    for directory in (dead, live, old, template):
        directory.mkdir()
        (directory / "ram").write_bytes(b"x" * 4096)
    maker = subprocess.Popen([sys.executable, "-c", "import sys; from runv.templates.store import lock; lock(sys.argv[1]); "
                              "print(flush=True); sys.stdin.read()", str(live)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert maker.stdout.readline() == "\n"  # it holds its directory
        assert store.reclaim() == []  # nothing is a minute old yet: a maker locks its directory once made
        assert store.reclaim(older_than=0) == [dead, old]
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, template.name])
        assert f"reclaimed {dead}: the template maker that made it died" in caplog.text
    finally:
        maker.kill()
        maker.wait()
    assert store.reclaim(older_than=0) == [live]  # its maker died too
