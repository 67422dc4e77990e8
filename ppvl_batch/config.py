"""Option defaults from a TOML file (`ppvl-ocr.toml` in the working directory, or `--config FILE`).

    model = "models/paddleocr-vl"     # top level: any command that has the option
    threads = 4

    [scan]                             # one table per command: only that command
    output = "ocr.jsonl"
    markdown = "md"
    batch-size = 8

Keys are option names, with `-` or `_`. The file only supplies defaults: a command-line option or
its environment variable wins over it. An unknown key is an error (exit 2), so a typo does not
silently do nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from ppvl_batch.errors import UsageError

DEFAULT_CONFIG = "ppvl-ocr.toml"


def _param_names(command: click.Command) -> set[str]:
    return {p.name for p in command.params if p.name and p.name not in ("config", "help")}


def load_defaults(ctx: click.Context, path: str | None) -> dict[str, Any]:
    """The default_map for `ctx.command` from the config file (explicit `path`, else
    ./ppvl-ocr.toml if present, else nothing)."""
    if path is None:
        if not Path(DEFAULT_CONFIG).is_file():
            return {}
        path = DEFAULT_CONFIG
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config {path}: {e}") from e

    command = ctx.command
    group = ctx.parent.command if ctx.parent is not None else None
    siblings = group.commands if isinstance(group, click.Group) else {command.name: command}
    every_option = set().union(*(_param_names(c) for c in siblings.values()))

    names = _param_names(command)
    defaults: dict[str, Any] = {}
    for key, value in data.items():  # top level first: a command's own table overrides it
        if not isinstance(value, dict):
            name = key.replace("-", "_")
            if name not in every_option:
                raise UsageError(f"config {path}: unknown option {key!r}")
            if name in names:
                defaults[name] = value
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in siblings:
                raise UsageError(f"config {path}: [{key}] is not a ppvl-ocr command")
            for sub_key, sub_value in value.items():
                name = sub_key.replace("-", "_")
                if name not in _param_names(siblings[key]):
                    raise UsageError(f"config {path}: [{key}] has no option {sub_key!r}")
                if key == command.name:
                    defaults[name] = sub_value
    return defaults


def config_option(func: Any) -> Any:
    """`--config FILE`: read before the other options, so its values become their defaults."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        ctx.default_map = {**(ctx.default_map or {}), **load_defaults(ctx, value)}
        return value

    return click.option(
        "--config",
        metavar="FILE",
        is_eager=True,
        expose_value=False,
        envvar="PPVL_CONFIG",
        callback=callback,
        help=f"TOML file of option defaults (default: ./{DEFAULT_CONFIG} if present). [env PPVL_CONFIG]",
    )(func)
