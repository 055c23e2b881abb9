"""The typer command line: ``app`` holds the global options, each command is one module."""
