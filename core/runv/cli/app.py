"""The ``runv`` entry point: the hot commands' common forms run from :mod:`runv.cli.fast`
without importing typer; everything else goes to the typer app (:mod:`runv.cli.commands`),
the one definition of the command line."""

import sys

from runv.api.errors import RunvError


def main(*, fast: bool = True) -> None:
    """Entry point: RunvError becomes one line on stderr (and in --log) and exit status 1.
    ``fast=False`` sends every form to typer (the tests compare the two paths)."""
    try:
        from runv.cli import fast as fast_path

        parsed = fast_path.parse(sys.argv[1:]) if fast else None
        if parsed is None:
            from runv.cli.commands import app

            app()
        else:
            sys.exit(fast_path.run(*parsed))
    except RunvError as exc:
        log = sys.modules.get("runv.log")  # never imported: no --log, and nothing to write
        if log is not None:
            log.logger.error("%s", exc)
        print(f"runv: {exc}", file=sys.stderr)
        sys.exit(1)
