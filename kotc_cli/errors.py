"""Exit codes and the two errors every subcommand may raise (like kubectl: 0 ok, 1 found, 2 usage)."""

from __future__ import annotations

OK = 0
PROBLEM = 1
"""The command ran and found something wrong (dead letters, a service not ready, drift to apply)."""
USAGE = 2
"""Bad flags, or a dependency the command needs is unreachable (the message names it)."""


class CliError(Exception):
    """Ends the command with exit code 2 and this message on stderr."""


class Unreachable(CliError):
    """A dependency the command needs did not answer."""

    def __init__(self, what: str, where: str, detail: str) -> None:
        super().__init__(f"{what} unreachable at {where}: {detail}")
        self.what = what
