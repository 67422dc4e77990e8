"""Errors that end a command, and the exit code each one maps to.

`ExitCode` is the one table of exit codes: each member carries its description, and the
`--help` texts (`exit_codes_help`) are made from it; the README's table is checked against it
by tests/test_cli.py.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes, the same for every command; `description` says when each is used."""

    description: str

    def __new__(cls, value: int, description: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    OK = 0, "every page read in this run is ok; `ask`: answered"
    PAGES_FAILED = 1, ("some pages or files failed (their records say why); `ask`: a page could not be read, or "
                       "the server could not be reached or answered with an error; `serve`: cannot listen; "
                       "`export`: an input changed since its records were read")
    USAGE = 2, ("usage error: bad option, argument or config file, output inside the input tree, a prompt "
                "the model cannot take, an API key the server refused")
    MODEL = 3, "model bundle or checkpoint missing or invalid"
    OUTPUT = 4, "output not writable, disk full, locked by another run, or would overwrite a file that is not ours"
    INTERRUPTED = 130, "interrupted (Ctrl-C, SIGTERM); running the same command again resumes"


def exit_codes_help(codes: Iterable[ExitCode] = ExitCode, width: int = 76) -> str:
    """The `Exit codes:` paragraph of a command's --help (click keeps a `\\b` paragraph as is)."""
    lines = ["\b", "Exit codes:"]
    for code in codes:
        lines += textwrap.wrap(code.description, width, initial_indent=f"  {int(code):<5}", subsequent_indent=" " * 7)
    return "\n".join(lines)


class PPVLError(Exception):
    """An error with a one-line message for the user and an exit code."""

    exit_code: ExitCode = ExitCode.PAGES_FAILED


class UsageError(PPVLError):
    exit_code = ExitCode.USAGE


class ModelError(PPVLError):
    """A bundle or checkpoint that is missing, incomplete or not PaddleOCR-VL."""

    exit_code = ExitCode.MODEL


class OutputError(PPVLError):
    """An output that cannot be written (permissions, disk full, would overwrite user data)."""

    exit_code = ExitCode.OUTPUT
