"""Errors that end a command, and the exit code each one maps to.

| code | meaning                                                        |
|------|----------------------------------------------------------------|
| 0    | every page ok                                                  |
| 1    | some pages or files failed (their records say why)             |
| 2    | usage error (bad option, bad argument)                         |
| 3    | model bundle or checkpoint missing or invalid                  |
| 4    | output not writable, disk full                                 |
| 130  | interrupted (Ctrl-C, SIGTERM); re-running the command resumes  |
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    PAGES_FAILED = 1
    USAGE = 2
    MODEL = 3
    OUTPUT = 4
    INTERRUPTED = 130


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
